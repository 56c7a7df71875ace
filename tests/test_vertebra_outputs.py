"""The vertebra head's findings everywhere the model goes: ``<out>_vertebrae.csv`` from both
backends (boxes and points in original pixels, the DICOM identifiers), the exported
``vertebrae`` output and its parity, the overlays, review.html and the SR's per-vertebra
groups. One tiny checkpoint with the head (``vertebra_checkpoint``, untrained, its output
layer set so that it finds vertebrae), one JAX and one ONNX prediction run over two DICOMs
of different shapes and a PNG."""

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

import debian
from sr_content import sr_items
from vertex_jax.data.io import read_image
from vertex_jax.data.preprocess import preprocess
from vertex_jax.dicom_out import codes
from vertex_jax.errors import InputDataError
from vertex_jax.explain.overlay import GRADE_COLOURS, draw_vertebrae
from vertex_jax.export.run import export
from vertex_jax.inference import load_trained
from vertex_jax.predict.onnx_backend import OnnxBackend
from vertex_jax.predict.vertebra_table import COLUMNS, vertebrae_path
from vertex_jax.synthetic.dicom_write import write_dicom
from vertex_jax.vertebrae import genant
from vertex_jax.vertebrae.annotations import POINT_COLUMNS, read_annotations
from vertex_jax.vertebrae.decode import Detection, decode_outputs
from vertex_jax.vertebrae.targets import HeadSpec

SHAPES = {"wide.dcm": (90, 150), "tall.dcm": (200, 70), "plain.png": (120, 100)}  # (h, w): padding both ways
IDS = ("study_instance_uid", "series_instance_uid", "sop_instance_uid", "dicom_patient_id", "accession_number")
KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "PatientID", "AccessionNumber")


def _image(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    spine = np.exp(-((xx - shape[1] / 2 - 4 * np.sin(yy / 15)) / (shape[1] / 8)) ** 2)
    return ((0.3 + 0.6 * spine + rng.normal(0, 0.05, shape)).clip(0, 1) * 4095).astype(np.uint16)


def _predict(*args) -> str:
    from vertex_jax.predict.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*map(str, args), "--no-progress", "--workers", "1"]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def runs(vertebra_checkpoint, tmp_path_factory):
    """The JAX run (with --explain and --dicom-out) and the ONNX run of the exported model."""
    tmp = tmp_path_factory.mktemp("vertebra_outputs")
    folder = tmp / "in"
    folder.mkdir()
    for i, (name, shape) in enumerate(SHAPES.items()):
        if name.endswith(".dcm"):
            write_dicom(folder / name, _image(shape, i), bits_stored=12, patient_id=f"PAT{i}")
        else:
            cv2.imwrite(str(folder / name), _image(shape, i))
    jax_out = tmp / "jax" / "scores.csv"
    stdout = _predict("--checkpoint", vertebra_checkpoint, "--input", folder, "--out", jax_out,
                      "--explain", tmp / "explain", "--dicom-out", tmp / "dicom")
    exported = export(vertebra_checkpoint, tmp / "export", ("onnx", "savedmodel"), batch_sizes=(2,),
                      log=lambda _: None)
    onnx_out = tmp / "onnx" / "scores.csv"
    _predict("--backend", "onnx", "--model", exported["onnx"], "--input", folder, "--out", onnx_out)
    read = lambda p: pd.read_csv(vertebrae_path(p), keep_default_na=False)  # noqa: E731
    return {"tmp": tmp, "folder": folder, "stdout": stdout, "jax": read(jax_out), "onnx": read(onnx_out),
            "scores": pd.read_csv(jax_out, keep_default_na=False), "onnx_dir": exported["onnx"],
            "savedmodel_dir": exported["savedmodel"]}


@pytest.fixture(scope="module")
def by_hand(runs, vertebra_checkpoint) -> dict:
    """Each input's canvas and geometry preprocessed here, and the exported model's raw
    vertebra map of them (the JAX model's to 1e-4: the export's parity check, and the two
    backends' tables agree below; the JAX model called eagerly would cost 9 s)."""
    trained = load_trained(vertebra_checkpoint)
    prepared = [preprocess(read_image(runs["folder"] / name).pixels, trained.preprocess) for name in SHAPES]
    canvases = np.stack([c for c, _ in prepared])[..., None]
    clinical, mask = np.zeros((len(SHAPES), 3), np.float32), np.ones((len(SHAPES), 3), np.float32)
    _, _, raw = OnnxBackend(runs["onnx_dir"]).score_vertebrae(canvases, clinical, mask)
    return {"spec": trained.vertebra_spec, "geometries": [g for _, g in prepared], "raw": raw}


def test_csv_is_the_head_decoded_in_original_pixels(runs, by_hand):
    table, folder = runs["jax"], runs["folder"]
    assert list(table.columns[-len(COLUMNS):]) == list(COLUMNS)
    assert f"{len(table)} vertebra(e) found in 3 image(s)" in runs["stdout"]
    assert set(table["image_id"]) == {"wide", "tall", "plain"} and (table["grade"] >= 1).any()
    spec = by_hand["spec"]
    found_all = decode_outputs(by_hand["raw"], spec, by_hand["geometries"])
    canvas_all = decode_outputs(by_hand["raw"], spec, None)
    for name, geometry, found, on_canvas in zip(SHAPES, by_hand["geometries"], found_all, canvas_all):
        assert geometry.original == SHAPES[name] and geometry.offset != (0, 0)  # padded on the canvas
        rows = table[table["image_id"] == Path(name).stem]
        assert len(rows) == len(found) == len(on_canvas) > 0
        for (_, row), det, det_canvas in zip(rows.iterrows(), found, on_canvas):
            box = row[["x0", "y0", "x1", "y1"]].to_numpy(float)
            np.testing.assert_allclose(box, det.box, atol=0.006)
            # the canvas box through padding, resize and border crop undone, clipped to the crop
            corners = geometry.to_original(np.reshape(det_canvas.box, (2, 2))).ravel()
            y0, x0, y1, x1 = geometry.crop
            expected = np.clip(corners, [x0, y0] * 2, [x1, y1] * 2)
            np.testing.assert_allclose(box, expected, atol=0.006)
            points = row[list(POINT_COLUMNS)].to_numpy(float).reshape(6, 2)
            np.testing.assert_allclose(points, geometry.to_original(np.array(det_canvas.points)), atol=0.006)
            np.testing.assert_allclose(row[["ha", "hm", "hp"]].to_numpy(float), genant.heights(points), atol=0.02)
            assert row["measured_grade"] == genant.grade_from_loss(row["height_loss"])
            assert (row["level"] or None) == det.level and row["grade"] == det.grade
            np.testing.assert_allclose(row["fracture_prob"], 1 - row["grade_prob_0"], atol=1e-12)
            np.testing.assert_allclose(row["fracture_prob"], det.fracture_probability, rtol=1e-6)
    # DICOM identifiers from the headers, blank for the PNG; the file reads back as annotations
    for name, keyword in zip(IDS, KEYWORDS):
        for image_id in ("wide", "tall"):
            header = pydicom.dcmread(folder / f"{image_id}.dcm", stop_before_pixels=True)
            assert set(table.loc[table["image_id"] == image_id, name].astype(str)) == {str(header.get(keyword, ""))}
        assert set(table.loc[table["image_id"] == "plain", name]) == {""}
    dicom = table[table["image_id"] != "plain"]
    assert (dicom["sop_instance_uid"] != "").all() and dicom["sop_instance_uid"].nunique() == 2
    back = read_annotations(vertebrae_path(runs["tmp"] / "jax" / "scores.csv"))
    assert sum(map(len, back.values())) == len(table)


def test_onnx_backend_gives_the_same_rows(runs):
    jax_rows, onnx_rows = runs["jax"], runs["onnx"]
    text = ["image_id", "path", "level", "grade", "measured_grade", *IDS]
    assert jax_rows[text].equals(onnx_rows[text])
    numbers = [c for c in COLUMNS if c not in text]
    np.testing.assert_allclose(onnx_rows[numbers].to_numpy(float), jax_rows[numbers].to_numpy(float),
                               atol=0.011)  # 0.01-pixel rounding of a value a float32 ulp apart


def test_export_records_the_head_and_its_parity(runs, by_hand, tmp_path):
    tf_meta = json.loads((runs["savedmodel_dir"] / "model.json").read_text())
    meta = json.loads((runs["onnx_dir"] / "model.json").read_text())
    for m in (meta, tf_meta):
        assert HeadSpec.from_dict(m["vertebrae"]) == by_hand["spec"]
        (described,) = [o for o in m["outputs"] if o["name"] == "vertebrae"]
        assert described["shape"] == [None, 8, 4, 34]
        # onnxruntime and TensorFlow against JAX and each other (NaN, failing, were one missing)
        diffs = m["verification"]["max_abs_diff"]
        assert set(diffs) == {"onnxruntime_vs_jax", "tensorflow_vs_jax", "tensorflow_vs_onnxruntime"}
        assert all(0 < d["vertebrae"] <= 1e-4 for d in diffs.values()), diffs
    assert by_hand["raw"].shape == (3, 8, 4, 34)
    # a model.json whose layout is not this code's is refused
    copy = shutil.copytree(runs["onnx_dir"], tmp_path / "onnx")
    meta["vertebrae"]["layout"]["grade"] = [30, 33]
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="vertebra channel layout"):
        OnnxBackend(copy)


def _code(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeValue


def _vertebra_groups(sr) -> list[dict]:
    """Each per-vertebra measurement group of an SR as {concept code value: content}."""
    groups = []
    for item in sr_items(sr):
        children = list(getattr(item, "ContentSequence", []))
        if any(_code(c) == "121071" and c.ConceptCodeSequence[0].CodeValue == codes.VERTEBRA.value
               for c in children if c.ValueType == "CODE"):
            groups.append({_code(c): c for c in children} | {"region": sr_items(item)})
    return groups


def test_sr_holds_a_group_per_vertebra(runs, tmp_path):
    table = runs["jax"]
    for image_id in ("wide", "tall"):
        (path,) = [p for p in (runs["tmp"] / "dicom").glob("*/SR_*.dcm")
                   if pydicom.dcmread(p).CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                   .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == table.loc[table["image_id"] == image_id,
                                                                                   "sop_instance_uid"].iloc[0]]
        groups = _vertebra_groups(pydicom.dcmread(path))
        rows = table[table["image_id"] == image_id]
        assert len(groups) == len(rows)
        for group, (_, row) in zip(groups, rows.iterrows()):
            site = group.get("363698007")
            if row["level"]:
                assert site.ConceptCodeSequence[0].CodeValue == codes.vertebra(row["level"]).value
            else:
                assert site is None
            (scoord,) = [c for c in group["region"] if c.ValueType == "SCOORD"]
            assert scoord.GraphicType == "POLYLINE"
            x0, y0, x1, y1 = row[["x0", "y0", "x1", "y1"]].astype(float)
            np.testing.assert_allclose(np.reshape(scoord.GraphicData, (-1, 2)),
                                       [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], atol=1e-4)
            assert group["genant_grade"].ConceptCodeSequence[0].CodeValue == f"genant-{row['grade']}"
            assert group["genant_measured"].ConceptCodeSequence[0].CodeValue == f"genant-{row['measured_grade']}"
            value = lambda k: float(group[k].MeasuredValueSequence[0].NumericValue)  # noqa: E731
            np.testing.assert_allclose(value("vfx_prob"), row["fracture_prob"], rtol=1e-5)
            np.testing.assert_allclose(value("height_loss"), 100 * row["height_loss"], rtol=1e-5)
    debian.require({"dciodvfy": "dicom3tools"})
    proc = subprocess.run([shutil.which("dciodvfy"), str(path)], capture_output=True, text=True, timeout=60)
    errors = [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("Error")]
    assert not errors and proc.returncode == 0, proc.stdout + proc.stderr


def test_the_service_answers_the_vertebrae_and_reports_them_in_its_sr(runs, tmp_path):
    """The HTTP service's scoring of one DICOM upload (serve.scoring, as POST /predict runs
    it): the JSON answer carries the ONNX prediction run's rows of that image, and the
    ``?report=sr`` Structured Report a group per vertebra."""
    from vertex_jax.serve.app import _structured_report
    from vertex_jax.serve.scoring import Scorer

    counts = runs["onnx"]["image_id"].value_counts()
    name = max(("wide", "tall"), key=lambda i: counts.get(i, 0))  # the DICOM with more vertebrae
    scorer = Scorer(runs["onnx_dir"])
    upload = Path(shutil.copy(runs["folder"] / f"{name}.dcm", tmp_path / "upload.dcm"))
    scored = scorer.score_file(upload, filename=f"{name}.dcm", fmt="DICOM", clinical={})
    want = runs["onnx"][runs["onnx"]["image_id"] == name]
    got = pd.DataFrame(scored.answer()["vertebrae"])
    assert len(want) >= 1 and list(got["level"].fillna("")) == list(want["level"])
    assert list(got["grade"]) == list(want["grade"]) and set(got["path"]) == {f"{name}.dcm"}
    assert list(got["sop_instance_uid"]) == list(want["sop_instance_uid"])
    numbers = ["x0", "y0", "x1", "y1", "fracture_prob", "height_loss"]
    np.testing.assert_allclose(got[numbers].to_numpy(float), want[numbers].to_numpy(float), atol=0.011)
    sr = pydicom.dcmread(io.BytesIO(_structured_report(scorer, upload, scored).body))
    assert len(_vertebra_groups(sr)) == len(want)


def test_review_lists_levels_and_grades(runs):
    page = (runs["tmp"] / "explain" / "review.html").read_text()
    graded = runs["jax"][runs["jax"]["grade"] >= 1].iloc[0]
    assert f"{graded['level'] or '?'}&nbsp;G{graded['grade']}" in page
    assert "vertebrae (G: Genant grade)" in page
    assert len(list((runs["tmp"] / "explain").glob("*.png"))) > 0


def test_overlay_labels_every_vertebra_and_outlines_the_graded():
    picture = np.zeros((200, 120, 3), np.uint8)
    probabilities = (0.1,) * 13
    found = [Detection((60, 20, 100, 50), 0.9, "T7", probabilities, 0, (0.9, 0.05, 0.03, 0.02)),
             Detection((60, 80, 100, 110), 0.8, "T8", probabilities, 2, (0.1, 0.2, 0.6, 0.1))]
    draw_vertebrae(picture, found)
    assert tuple(picture[80, 80]) == GRADE_COLOURS[2] and tuple(picture[95, 99]) == GRADE_COLOURS[2]
    assert not picture[20, 80].any() and not picture[35, 60].any()  # grade 0: no outline
    assert picture[20:50, :60].any() and picture[80:110, :60].any()  # each labelled left of its box

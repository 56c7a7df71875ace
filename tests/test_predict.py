"""Inference from a trained checkpoint: batch prediction (DICOM, PNG, bad files), Grad-CAM
and its mapping, the run's evaluation report, and VFA fine-tuning from an X-ray run."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pydicom
import pydicom.data
import pytest
from flax import nnx

from vertex_jax.explain import DEFAULT_METHOD
from vertex_jax.explain import localization as loc
from vertex_jax.explain.overlay import overlay
from vertex_jax.explain.saliency import make_saliency
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.io import read_image
from vertex_jax.data.preprocess import Geometry, PreprocessConfig, preprocess
from vertex_jax.inference import load_trained
from vertex_jax.synthetic.dicom_write import write_dicom

REPO = Path(__file__).resolve().parents[1]
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"  # shipped, never downloaded


def run_module(module, *args, env=None):
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "2", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=600)
    return proc


@pytest.fixture(scope="module")
def xray_run(tmp_path_factory):
    """A tiny X-ray run (two tasks, a few steps) on the synthetic tiny cohort."""
    workdir = tmp_path_factory.mktemp("xray")
    proc = run_module("vertex_jax.main", "--config=configs/xray.py:tiny", f"--workdir={workdir}",
                      "--config.tasks=pvf,osteo", "--config.max_steps=4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


def _manifest(run: Path) -> pd.DataFrame:
    (cohort,) = (run / "data").glob("synthetic-xray-*")
    return pd.read_csv(cohort / "manifest.csv", dtype=str, keep_default_na=False), cohort


def test_predict_csv_matches_the_model_called_by_hand(xray_run, tmp_path):
    manifest, cohort = _manifest(xray_run)
    rows = manifest.head(6).copy()
    rows.loc[rows.index[1], "age"] = ""  # one missing clinical value
    rows.to_csv(cohort / "subset.csv", index=False)
    out = tmp_path / "scores.csv"
    proc = run_module("vertex_jax.predict", "--checkpoint", xray_run, "--input",
                      cohort / "subset.csv", "--out", out, "--batch", 4, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    blank = rows[["age", "sex", "bmi"]] == ""
    assert f"{int(blank.any(axis=1).sum())} image(s) lacked some clinical value" in proc.stdout
    scores = pd.read_csv(out, keep_default_na=False)
    assert list(scores["image_id"]) == list(rows["image_id"])
    assert scores["clinical_missing"].tolist() == [
        ";".join(c for c in ("age", "sex", "bmi") if b[c]) for _, b in blank.iterrows()]
    assert {"pvf_prob", "osteo_prob", "pvf_logit", "osteo_logit", "model", "model_step",
            "preprocess_version"} <= set(scores.columns)

    trained = load_trained(xray_run)
    mean, std = np.array(trained.stats.mean), np.array(trained.stats.std)
    call = nnx.jit(lambda model, *inputs: model(*inputs))  # one program, not each operation compiled alone
    for i in (0, 1, 5):
        r = rows.iloc[i]
        canvas, _ = preprocess(read_image(cohort / r["path"]).pixels, trained.preprocess)
        sex = {"F": 1.0, "M": 0.0}.get(r["sex"], np.nan)
        raw = np.array([float(r["age"] or "nan"), sex, float(r["bmi"] or "nan")])
        present = ~np.isnan(raw)
        clinical = np.where(present, (raw - mean) / std, 0.0).astype(np.float32)[None]
        logits = np.asarray(call(trained.model, jnp.asarray(canvas[None, ..., None]), clinical,
                                 present.astype(np.float32)[None]))
        np.testing.assert_allclose(scores.loc[i, ["pvf_logit", "osteo_logit"]].to_numpy(float),
                                   logits[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scores.loc[i, "pvf_prob_raw"], 1 / (1 + np.exp(-logits[0, 0])),
                                   rtol=1e-5)
        # the run's own calibration, fitted on its validation split when training ended
        expected = trained.calibration.probabilities(logits.astype(np.float64), trained.tasks)
        np.testing.assert_allclose(scores.loc[i, ["pvf_prob", "osteo_prob"]].to_numpy(float), expected[0],
                                   rtol=1e-4, atol=1e-6)


def test_predict_folder_of_dicom_and_png_lists_bad_files(xray_run, tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = (rng.random((120, 80)) * 4095).astype(np.uint16)
    cv2.imwrite(str(folder / "a.png"), image)
    write_dicom(folder / "sub" / "b.dcm", image, bits_stored=12, compression="jpegls")
    write_dicom(folder / "sub" / "noext", image, bits_stored=12, photometric="MONOCHROME1")
    write_dicom(tmp_path / "plain.dcm", image, bits_stored=12)
    _without_preamble(tmp_path / "plain.dcm", folder / "IM0001")  # no preamble, no suffix
    write_dicom(folder / "a.dcm", image, bits_stored=12, patient_sex="F", patient_age_years=71)  # stem of a.png
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 10)
    (folder / "fake.png").write_text("not an image")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    shutil.copy(PYDICOM_FILES / "test-SR.dcm", folder / "report")  # DICOM by content, no image
    shutil.copy(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
    out = tmp_path / "scores.csv"
    proc = run_module("vertex_jax.predict", "--checkpoint", xray_run, "--input", folder,
                      "--out", out, "--no-progress", "--clinical-from-dicom")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr  # no Orbax notices about read-only managers
    scores = pd.read_csv(out, keep_default_na=False).set_index("image_id")
    assert sorted(scores.index) == ["IM0001", "a.dcm", "a.png", "sub/b", "sub/noext"]
    assert scores.loc["a.dcm", "clinical_source"] == "age=dicom;sex=dicom;bmi=missing"
    assert (float(scores.loc["a.dcm", "age"]), scores.loc["a.dcm", "sex"]) == (71.0, "F")
    assert scores.loc["a.dcm", "clinical_missing"] == "bmi"
    header = pydicom.dcmread(folder / "a.dcm", stop_before_pixels=True)  # the identifiers, filed back
    assert (scores.loc["a.dcm", "sop_instance_uid"], scores.loc["a.dcm", "study_instance_uid"]) == \
        (header.SOPInstanceUID, header.StudyInstanceUID) and scores.loc["a.dcm", "patient_id"] == header.PatientID
    assert scores.loc["a.png", "sop_instance_uid"] == ""
    assert "5 image(s) lacked some clinical value" in proc.stdout, proc.stdout
    bad = pd.read_csv(tmp_path / "scores_unreadable.csv")
    assert sorted(bad["image_id"]) == ["broken", "fake", "report"]
    assert bad.set_index("image_id").loc["report", "kind"] == "not an image"
    assert bad["reason"].str.len().min() > 5
    skipped = pd.read_csv(tmp_path / "scores_skipped.csv")
    assert sorted(Path(p).name for p in skipped["path"]) == ["DICOMDIR", "notes.txt"]
    assert ("10 file(s) looked at: 5 scored, 2 unreadable, 1 not an image, 2 skipped by extension"
            in proc.stdout)
    assert "2 unreadable file(s)" in proc.stdout and "Comprehensive SR Storage" in proc.stdout
    # The same image as PNG, as JPEG-LS DICOM (with and without preamble) and as MONOCHROME1
    # DICOM gives one score.
    same = scores.loc[["a.png", "sub/b", "sub/noext", "IM0001"], "pvf_prob"]
    np.testing.assert_allclose(same, same.iloc[0], rtol=1e-5)


def test_predict_refuses_bad_arguments(xray_run, tmp_path):
    proc = run_module("vertex_jax.predict", "--backend", "onnx", "--input", tmp_path, "--out", "x.csv")
    assert proc.returncode != 0 and "--backend onnx needs --model" in proc.stderr
    proc = run_module("vertex_jax.predict", "--checkpoint", tmp_path / "nothing", "--input",
                      tmp_path, "--out", tmp_path / "x.csv")
    assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_gradcam_equals_the_linear_head_weights(xray_run):
    """In eval mode the head after pooling is linear, so d logit / d A[i, j, c] is the
    product of the head's kernels over h*w: an independent route to the CAM weights."""
    trained = load_trained(xray_run)
    model = trained.model
    rng = np.random.default_rng(1)
    h, w = trained.preprocess.canvas
    image = rng.integers(0, 256, (3, h, w, 1), dtype=np.uint8)
    clinical, mask = rng.normal(size=(3, 3)).astype(np.float32), np.ones((3, 3), np.float32)
    maps, logits = make_saliency(model, ("pvf", "osteo"), "gradcam")(image, clinical, mask)
    feats = np.asarray(model.image_features(jnp.asarray(image)), np.float64)
    chain = (np.asarray(model.image_projection.kernel[...], np.float64)
             @ np.asarray(model.fusion.kernel[...], np.float64)[:100]
             @ np.asarray(model.output.kernel[...], np.float64))
    assert model.tasks == ("pvf", "osteo") and maps.shape == (3, 2, *feats.shape[1:3])
    for t in range(2):
        expected = np.maximum(np.einsum("bhwc,c->bhw", feats,
                                        chain[:, t] / (feats.shape[1] * feats.shape[2])), 0)
        expected /= np.maximum(expected.max(axis=(1, 2), keepdims=True), 1e-30)
        np.testing.assert_allclose(maps[:, t], expected, atol=1e-4)
    assert maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(logits, np.asarray(model(jnp.asarray(image), clinical, mask)), atol=1e-5)
    osteo_only, _ = make_saliency(model, "osteo", "gradcam")(image, clinical, mask)
    np.testing.assert_allclose(osteo_only[:, 0], maps[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match="no task"):
        make_saliency(model, "fracture", "gradcam")


def test_heatmap_maps_back_onto_the_original_and_pointing():
    original = np.zeros((200, 100), np.uint16)
    original[120:140, 30:60] = 4000
    canvas, geometry = preprocess(original, PreprocessConfig(canvas=(64, 32)))
    heat = geometry.heatmap_to_original(canvas.astype(np.float32) / 255.0)
    assert heat.shape == original.shape
    x, y = loc.peak(heat)
    assert 30 <= x < 60 and 120 <= y < 140
    def hits(box, tolerance=0.0):
        r = loc.score_image(heat, [loc.Vertebra("L1", box, True)], tolerance)
        return r["strict"], r["tolerant"]
    assert hits((25, 115, 65, 145)) == (True, True)
    assert hits((0, 0, 20, 20)) == (False, False)
    assert hits((48, 133, 58, 143)) == (False, False)
    assert hits((48, 133, 58, 143), tolerance=10.0) == (False, True)
    picture = overlay(original, heat, region=(30, 120, 60, 140))
    assert picture.shape == (200, 100, 3) and picture.dtype == np.uint8
    assert tuple(picture[120, 45]) == (255, 255, 255)  # the region's top edge is drawn
    assert isinstance(geometry, Geometry)


def test_predict_with_explanations_and_localisation(xray_run, tmp_path):
    manifest, cohort = _manifest(xray_run)
    manifest[manifest["pvf"] == "1"].head(3).to_csv(cohort / "fractured.csv", index=False)
    proc = run_module("vertex_jax.predict", "--checkpoint", xray_run, "--input",
                      cohort / "fractured.csv", "--out", tmp_path / "s.csv", "--explain",
                      tmp_path / "cam", "--annotations", cohort / "annotations.json", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pictures = sorted(p.name for p in (tmp_path / "cam").glob("*.png"))
    assert len(pictures) == 6  # 3 images x 2 tasks
    first = cv2.imread(str(tmp_path / "cam" / pictures[0]))
    row = manifest[manifest["pvf"] == "1"].iloc[0]
    shape = read_image(cohort / row["path"]).pixels.shape
    assert first.shape[:2] == shape
    summary = json.loads((tmp_path / "cam" / "localization.json").read_text())
    pvf = summary["tasks"]["pvf"]
    assert summary["method"] == DEFAULT_METHOD and pvf["images"] == 3 and len(pvf["per_image"]) == 3
    assert 0 <= pvf["strict"]["rate"] <= pvf["tolerant"]["rate"] <= 1
    assert 0 <= pvf["energy"]["mean"] <= 1 and 0 < pvf["chance"]["image"] < pvf["chance"]["spine"] < 1
    assert summary["randomization"]["pvf"]["images"] == 3
    assert "strict pointing" in proc.stdout and "randomisation check" in proc.stdout
    scores = pd.read_csv(tmp_path / "s.csv")
    first_row = scores[scores["image_id"] == row["image_id"]].iloc[0]
    assert 0 <= first_row["pvf_peak_x"] < shape[1] and 0 <= first_row["pvf_peak_y"] < shape[0]
    assert first_row["pvf_region_x0"] <= first_row["pvf_peak_x"] < first_row["pvf_region_x1"]
    assert first_row["pvf_level"] in {v["level"] for v in json.loads(
        (cohort / "annotations.json").read_text())[row["image_id"]]}
    page = (tmp_path / "cam" / "review.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 6 and row["image_id"] in page


def test_evaluate_workdir_scores_the_runs_splits(xray_run):
    proc = run_module("vertex_jax.evaluate", "--workdir", xray_run, "--bootstrap", 20,
                      "--thresholds-on-eval")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = xray_run / "evaluation"
    assert (report / "report.html").exists() and (report / "thresholds.json").exists()
    scores = pd.read_csv(report / "scores.csv", dtype=str)
    splits = pd.read_csv(xray_run / "splits.csv", dtype=str)
    expected = set(splits[splits["split"].isin(["val", "test"])]["image_id"])
    assert set(scores["image_id"]) == expected


def test_vfa_fine_tunes_from_the_xray_run(xray_run, tmp_path):
    proc = run_module("vertex_jax.main", "--config=configs/vfa.py:tiny", f"--workdir={tmp_path}",
                      f"--config.init_from={xray_run}", "--config.tasks=pvf,osteo",
                      "--config.max_steps=2", "--config.optim.freeze_stages=1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "init_from" in proc.stderr and "loaded" in proc.stderr
    splits = pd.read_csv(tmp_path / "splits.csv")
    share = splits.drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert set(share.index) == {"finetune", "val", "test"}
    assert abs(share["test"] - 0.70) < 0.08 and abs(share["finetune"] + share["val"] - 0.30) < 0.08
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["domain"] == "vfa"
    xray, vfa = load_trained(xray_run), load_trained(tmp_path)
    # calibrated on its own validation split (or not at all), never the X-ray calibration
    assert xray.calibration is not None and xray.calibration.fitted_on["domain"] == "xray"
    assert vfa.calibration is None or vfa.calibration.fitted_on["domain"] == "vfa"
    assert "calibration: " in proc.stdout
    # The frozen stem kept the X-ray weights; a trained head moved away from them.
    np.testing.assert_array_equal(vfa.model.backbone.stem_conv.kernel[...],
                                  xray.model.backbone.stem_conv.kernel[...])
    assert not np.array_equal(vfa.model.output.kernel[...], xray.model.output.kernel[...])


def test_synthetic_cohort_path_survives_the_config_json_round_trip():
    from ml_collections import ConfigDict

    from vertex_jax.data.prepare import synthetic_manifest_path

    data = ConfigDict({"domain": "xray", "synthetic": {
        "num_patients": 10, "scale": 0.25, "seed": 0,
        "options": {"grade_probs": (0.0, 0.35, 0.65), "cleft_fraction": 0.5}}})
    again = ConfigDict(json.loads(data.to_json()))
    assert synthetic_manifest_path(data, Path("d")) == synthetic_manifest_path(again, Path("d"))
    assert "grade_probs0.0_0.35_0.65" in str(synthetic_manifest_path(data, Path("d")))


# ------------------------------------------------- every file accounted for (no model needed)


def _without_preamble(path: Path, out: Path) -> Path:
    """``path`` without the 128-byte preamble and file meta (as many PACS/CD exports are)."""
    ds = pydicom.dcmread(path)
    ds.preamble = None
    del ds.file_meta
    ds.save_as(out, implicit_vr=True, little_endian=True)
    return out


class _Constant:
    """A backend that scores every image 0.5: enough to exercise reading and accounting."""

    tasks, name, step, calibration = ("pvf",), "constant", 0, None
    preprocess = PreprocessConfig(canvas=(32, 16))
    stats = ClinicalStats((70.0, 0.5, 25.0), (10.0, 0.5, 4.0))

    def score(self, image, clinical, mask):
        return np.full((len(image), 1), 0.5, np.float32), np.zeros((len(image), 1), np.float32)


def _hostile_folder(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    image = np.random.default_rng(1).integers(0, 4096, (60, 40), dtype=np.uint16)
    cv2.imwrite(str(folder / "x.png"), image)
    write_dicom(folder / "x.dcm", image, bits_stored=12, patient_sex="M", patient_age_years=64)
    _without_preamble(folder / "x.dcm", folder / "sub" / "IM0001")
    write_dicom(folder / "sub" / "1.2.840.113619.2.55.3.320", image, bits_stored=12)  # a UID as name
    shutil.copy(PYDICOM_FILES / "test-SR.dcm", folder / "sub" / "SR0001")
    shutil.copy(PYDICOM_FILES / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
    for i in range(7):
        (folder / f"cut{i}.png").write_bytes(cv2.imencode(".png", image)[1].tobytes()[:100 + i])
    (folder / "README.txt").write_text("exported from PACS")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")


def test_folder_inputs_are_unique_and_dicom_by_content(tmp_path):
    from vertex_jax.data.folder import find_images
    from vertex_jax.predict.inputs import collect_inputs

    _hostile_folder(tmp_path / "in")
    inputs = collect_inputs(tmp_path / "in", "xray")  # x.png and x.dcm no longer abort the run
    ids = inputs.table["image_id"].tolist()
    assert len(set(ids)) == len(ids) and {"x.png", "x.dcm", "sub/IM0001", "sub/1.2.840.113619.2.55.3",
                                          "sub/SR0001", "cut0"} <= set(ids)
    assert sorted(Path(p).name for p in inputs.skipped["path"]) == [".DS_Store", "DICOMDIR", "README.txt"]
    assert "DICOMDIR" in inputs.skipped.set_index(inputs.skipped["path"].map(lambda p: Path(p).name)
                                                  ).loc["DICOMDIR", "reason"]
    assert len(find_images(tmp_path / "in")) == len(ids) == 12


def test_summary_counts_add_up_and_lists_end_with_how_many_more(tmp_path, capfd):
    from vertex_jax.predict.inputs import collect_inputs
    from vertex_jax.predict.run import account, score_table

    _hostile_folder(tmp_path / "in")
    inputs = collect_inputs(tmp_path / "in", "xray", clinical_from_dicom=True)
    scores, failures = score_table(inputs.table, _Constant(), batch=2, workers=2, progress=False)
    assert capfd.readouterr().err == ""  # libpng's complaints went into the reasons
    lines = account(tmp_path / "out.csv", len(scores), failures, inputs.skipped)
    assert lines[0] == "15 file(s) looked at: 4 scored, 7 unreadable, 1 not an image, 3 skipped by extension"
    text = "\n".join(lines)
    assert "  … and 2 more (see " + str(tmp_path / "out_unreadable.csv") + ")" in text
    assert "SR0001: not an image: a DICOM Comprehensive SR Storage object" in text
    # The decoder's own words, captured -- where this OpenCV says any (5.x prints nothing for a
    # truncated PNG, 4.x libpng's "PNG input buffer is incomplete"): ask it in a process of its own.
    said = subprocess.run([sys.executable, "-c", "import cv2, sys; cv2.imdecode(__import__('numpy')"
                           ".frombuffer(open(sys.argv[1], 'rb').read(), 'uint8'), -1)",
                           str(tmp_path / "in" / "cut0.png")], capture_output=True, text=True).stderr
    if "PNG input buffer is incomplete" in said:
        assert "PNG input buffer is incomplete" in text
    else:
        assert "OpenCV could not decode this PNG file" in text
    listed = pd.read_csv(tmp_path / "out_unreadable.csv")
    assert listed["kind"].value_counts().to_dict() == {"unreadable": 7, "not an image": 1}
    assert len(pd.read_csv(tmp_path / "out_skipped.csv")) == 3
    table = inputs.table.set_index("image_id")
    assert table.loc["sub/IM0001", "clinical_source"] == "age=dicom;sex=dicom;bmi=missing"
    assert (table.loc["sub/IM0001", "age"], table.loc["sub/IM0001", "sex"]) == (64.0, 0.0)  # M = 0.0
    assert table.loc["x.png", "clinical_source"] == "age=missing;sex=missing;bmi=missing"


def test_csv_values_win_over_the_header(tmp_path):
    from vertex_jax.predict.inputs import load_inputs

    write_dicom(tmp_path / "a.dcm", np.zeros((16, 16), np.uint8), bits_stored=8, patient_sex="F",
                patient_age_years=70)
    pd.DataFrame({"path": ["a.dcm"], "age": ["55"], "sex": [""]}).to_csv(tmp_path / "in.csv", index=False)
    row = load_inputs(tmp_path / "in.csv", "xray", clinical_from_dicom=True).iloc[0]
    assert (row["age"], row["sex"], row["clinical_source"]) == (55.0, 1.0, "age=csv;sex=dicom;bmi=missing")
    assert np.isnan(load_inputs(tmp_path / "in.csv", "xray").iloc[0]["sex"])  # only on request


def test_images_unlike_the_training_ones_are_flagged_or_refused(xray_run, tmp_path):
    from vertex_jax.data.input_check import geometry_finding, header_findings

    folder = tmp_path / "in"
    folder.mkdir()
    image = (np.random.default_rng(0).random((120, 80)) * 4095).astype(np.uint16)
    for name, view, part in (("lateral", "LL", "SPINE"), ("chest", "AP", "CHEST"), ("plain", "", "")):
        write_dicom(folder / f"{name}.dcm", image, bits_stored=12)
        ds = pydicom.dcmread(folder / f"{name}.dcm")
        ds.ViewPosition, ds.BodyPartExamined = view, part
        ds.save_as(folder / f"{name}.dcm")
    cv2.imwrite(str(folder / "wide.png"), image.T.copy())  # landscape: 80 x 120
    assert header_findings(folder / "lateral.dcm") == header_findings(folder / "plain.dcm") == []
    assert [f.split(" (")[0] for f in header_findings(folder / "chest.dcm")] == \
        ["ViewPosition AP", "BodyPartExamined CHEST"]
    assert geometry_finding((80, 120), "xray") and geometry_finding((120, 80), "xray") is None
    out = tmp_path / "s.csv"
    proc = run_module("vertex_jax.predict", "--checkpoint", xray_run, "--input", folder, "--out", out, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    flagged = pd.read_csv(out, keep_default_na=False).set_index("image_id")["input_check"]
    assert flagged["lateral"] == flagged["plain"] == "" and "ViewPosition AP" in flagged["chest"]
    assert "height/width 0.67" in flagged["wide"]
    assert "warning: 2 image(s) unlike the training images" in proc.stdout
    proc = run_module("vertex_jax.predict", "--checkpoint", xray_run, "--input", folder, "--out", out,
                      "--no-progress", "--refuse-unexpected")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(pd.read_csv(out)["image_id"]) == ["lateral", "plain"]
    assert sorted(pd.read_csv(tmp_path / "s_refused.csv")["image_id"]) == ["chest", "wide"]

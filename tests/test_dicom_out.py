"""predict --dicom-out: a Structured Report per scored DICOM image and a Secondary Capture per
saliency overlay, valid by dicom3tools' dciodvfy, every reference resolving to the source,
the scores equal to scores.csv's, the UIDs the same on a re-run; PNG inputs skipped and a
header without a study counted, the others written."""

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

import debian
from sr_content import sr_items
from checkpoints import write_checkpoint
from vertex_jax.dicom_out import NOT_FOR_CLINICAL_USE
from vertex_jax.dicom_out.capture import enlargement
from vertex_jax.dicom_out.report import structured_report
from vertex_jax.dicom_out.uids import output_uids
from vertex_jax.dicom_out.write import write_outputs
from vertex_jax.explain import DEFAULT_METHOD
from vertex_jax.synthetic.dicom_write import write_dicom

TASKS = ("pvf", "osteo")
THRESHOLDS = {"pvf": 0.5, "osteo": 0.3}
LEVEL_ROW = {"pvf_peak_x": 10.0, "pvf_peak_y": 20.0, "pvf_region_x0": 5, "pvf_region_y0": 15,  # a map's findings
             "pvf_region_x1": 16, "pvf_region_y1": 26, "pvf_level": "L1", "saliency_method": "hirescam"}


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:120, 0:80]
    spine = np.exp(-((xx - 40 - 5 * np.sin(yy / 20)) / 10.0) ** 2)
    return ((0.3 + 0.6 * spine + rng.normal(0, 0.05, yy.shape)).clip(0, 1) * 4095).astype(np.uint16)


def _predict(args: list[str]) -> str:
    from vertex_jax.predict.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One predict run with --explain --dicom-out --thresholds over two DICOMs of one study,
    one DICOM of another study, one without a StudyInstanceUID and a PNG."""
    tmp = tmp_path_factory.mktemp("dicom_out")
    checkpoint = write_checkpoint(tmp / "run")
    folder = tmp / "in"
    folder.mkdir()
    for i, name in enumerate(("a", "b", "c", "nostudy")):
        write_dicom(folder / f"{name}.dcm", _image(i), bits_stored=12, patient_id=f"PAT{i // 2}",
                    patient_sex="F", patient_age_years=70 + i)
    a = pydicom.dcmread(folder / "a.dcm")
    b = pydicom.dcmread(folder / "b.dcm")
    b.StudyInstanceUID, b.PatientID, b.InstanceNumber = a.StudyInstanceUID, a.PatientID, 2
    b.save_as(folder / "b.dcm")
    broken = pydicom.dcmread(folder / "nostudy.dcm")
    del broken.StudyInstanceUID
    broken.save_as(folder / "nostudy.dcm")
    cv2.imwrite(str(folder / "d.png"), _image(9))
    (tmp / "thresholds.json").write_text(json.dumps({t: {"youden": v} for t, v in THRESHOLDS.items()}))
    common = ["--checkpoint", str(checkpoint), "--input", str(folder), "--out", str(tmp / "scores.csv"),
              "--thresholds", str(tmp / "thresholds.json"), "--no-progress", "--workers", "1"]
    stdout = _predict([*common, "--explain", str(tmp / "cam"), "--dicom-out", str(tmp / "dicom")])
    scores = pd.read_csv(tmp / "scores.csv", keep_default_na=False)
    return {"tmp": tmp, "folder": folder, "stdout": stdout, "scores": scores.set_index("image_id"),
            "frame": scores, "out": tmp / "dicom", "checkpoint": checkpoint, "common": common}


def _outputs(folder: Path, kind: str) -> dict[str, pydicom.Dataset]:
    """Source SOPInstanceUID -> output of ``kind`` (SR, SC_pvf, ...), read back."""
    out = {}
    for path in sorted(folder.glob(f"*/{kind}_*.dcm")):
        ds = pydicom.dcmread(path)
        assert path.name == f"{kind}_{ds.SOPInstanceUID}.dcm" and path.parent.name == ds.StudyInstanceUID
        source = (ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                  .ReferencedSOPSequence[0] if kind == "SR" else ds.SourceImageSequence[0])
        out[source.ReferencedSOPInstanceUID] = ds
    return out


def test_every_dicom_image_gets_a_report_and_the_summary_counts_the_rest(run):
    stdout = run["stdout"]
    line = next(x for x in stdout.splitlines() if x.startswith("DICOM outputs"))
    # a, b, c: an SR each and an SC per task with a map; the PNG skipped; nostudy failed
    captures = sum(1 for _ in run["out"].glob("*/SC_*.dcm"))
    assert f"3 structured report(s) and {captures} secondary capture(s) for 3 DICOM image(s)" in line, stdout
    assert "1 input(s) skipped (not DICOM" in line and "1 output(s) failed" in line
    assert captures >= 3, "the tiny model's maps should give overlays"
    assert "nostudy.dcm (all): ValueError: the source header has no StudyInstanceUID" in stdout
    listing = pd.read_csv(run["out"] / "not_written.csv")
    assert sorted(Path(p).name for p in listing["path"]) == ["d.png", "nostudy.dcm"]
    assert set(listing["kind"]) == {"skipped", "failed"}
    assert len(list(run["out"].glob("*/SR_*.dcm"))) == 3
    assert not (run["tmp"] / "scores_vertebrae.csv").exists()  # no vertebra head, no vertebra file


def test_outputs_pass_dciodvfy(run, tmp_path):
    """Every SR and SC of the run, and an SR naming a vertebra: no Error (warnings allowed)."""
    debian.require({"dciodvfy": "dicom3tools"})
    validator = shutil.which("dciodvfy")
    source = pydicom.dcmread(run["folder"] / "a.dcm", stop_before_pixels=True)
    structured_report(source, {**run["frame"].iloc[0].to_dict(), **LEVEL_ROW}, tasks=TASKS).save_as(
        tmp_path / "SR_level.dcm", enforce_file_format=True)
    files = [*run["out"].glob("*/*.dcm"), tmp_path / "SR_level.dcm"]
    assert len(files) > 4
    for path in files:
        proc = subprocess.run([validator, str(path)], capture_output=True, text=True, timeout=60)
        report = proc.stdout + proc.stderr
        errors = [x for x in report.splitlines() if x.startswith("Error")]
        assert not errors and proc.returncode == 0, f"{path.name}:\n{report}"
        assert ("ComprehensiveSR" if path.name.startswith("SR_") else "SCImage") in report


def test_the_report_references_its_source_and_holds_the_scores(run):
    reports, peaks = _outputs(run["out"], "SR"), 0
    for image_id in ("a", "b", "c"):
        source = pydicom.dcmread(run["folder"] / f"{image_id}.dcm", stop_before_pixels=True)
        row = run["scores"].loc[image_id]
        sr = reports[source.SOPInstanceUID]
        assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
        assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.Modality == "SR"
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.StudyInstanceUID == source.StudyInstanceUID
        assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert NOT_FOR_CLINICAL_USE in sr.SeriesDescription and sr.PreliminaryFlag == "PRELIMINARY"
        assert sr.VerificationFlag == "UNVERIFIED"
        items = sr_items(sr)
        numbers = {i.ConceptNameCodeSequence[0].CodeValue: float(i.MeasuredValueSequence[0].NumericValue)
                   for i in items if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodingSchemeDesignator
                   == "99VERTEX"}
        for task in TASKS:
            assert numbers[f"{task}_prob"] == pytest.approx(row[f"{task}_prob"], rel=1e-9)
            assert numbers[f"{task}_prob_raw"] == pytest.approx(row[f"{task}_prob_raw"], rel=1e-9)
        calls = {i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeMeaning
                 for i in items if i.ValueType == "CODE"}
        for task, threshold in THRESHOLDS.items():
            assert calls[f"{task}_call"] == ("Positive" if row[f"{task}_prob"] >= threshold else "Negative")
        assert calls["121106"] == "Not for clinical use"  # Comment: the coded warning
        assert any(i.ValueType == "TEXT" and NOT_FOR_CLINICAL_USE in i.TextValue for i in items)
        images = [i for i in items if i.ValueType == "IMAGE"]
        assert images and all(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
                              for i in images)
        algorithms = {i.TextValue for i in items if i.ValueType == "TEXT"
                      and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"}
        assert algorithms == {f"step {row['model_step']}"}
        if row.get("pvf_map", "") != "empty":  # the map's peak: a POINT on the source image
            peaks += 1
            (point,) = [i for i in items if i.ValueType == "SCOORD" and i.GraphicType == "POINT"
                        and "pvf saliency peak" in str(_tracking_of(sr, i))]
            assert list(point.GraphicData) == pytest.approx([row["pvf_peak_x"] + 0.5, row["pvf_peak_y"] + 0.5])
            assert point.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
                source.SOPInstanceUID
    assert peaks, "the tiny model's maps should have peaks"


def _tracking_of(sr, scoord) -> str:
    """The tracking identifier of the group holding ``scoord``."""
    for group in sr_items(sr):
        if group.ValueType == "CONTAINER" and any(i is scoord for i in sr_items(group)):
            texts = [i.TextValue for i in group.ContentSequence if i.ValueType == "TEXT"
                     and i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"]
            if texts:
                return texts[0]
    return ""


def test_the_capture_is_the_overlay_in_the_source_study(run):
    captures = _outputs(run["out"], "SC_pvf")
    assert captures
    for image_id in ("a", "b", "c"):
        source = pydicom.dcmread(run["folder"] / f"{image_id}.dcm", stop_before_pixels=True)
        if source.SOPInstanceUID not in captures:
            assert run["scores"].loc[image_id].get("pvf_map", "") == "empty"
            continue
        sc = captures[source.SOPInstanceUID]
        assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        assert (sc.StudyInstanceUID, sc.PatientID) == (source.StudyInstanceUID, source.PatientID)
        assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.BurnedInAnnotation == "YES"
        assert NOT_FOR_CLINICAL_USE in sc.SeriesDescription and NOT_FOR_CLINICAL_USE in sc.ImageComments
        overlay = cv2.imread(str(run["tmp"] / "cam" / f"{image_id}_pvf.png"))
        pixels, factor = sc.pixel_array, enlargement(overlay.shape[1])
        assert factor > 1  # 80 columns: enlarged so that the warning is legible
        overlay = np.repeat(np.repeat(overlay[..., ::-1], factor, axis=0), factor, axis=1)
        assert pixels.shape[1:] == overlay.shape[1:] and pixels.shape[0] > overlay.shape[0]  # + the banner
        np.testing.assert_array_equal(pixels[-overlay.shape[0]:], overlay)
        banner = pixels[: pixels.shape[0] - overlay.shape[0]]
        assert banner.max() == 255 and (banner == 255).mean() > 0.02  # the warning, burned in


def test_the_uids_are_the_same_on_a_rerun_and_differ_by_model(run, tmp_path):
    """The outputs written again from scores.csv read back (a new call, another folder):
    the same files, the same UIDs; a different model, step, calibration or map: new UIDs."""
    again = tmp_path / "again"
    scores = pd.read_csv(run["tmp"] / "scores.csv", keep_default_na=False)
    write_outputs(scores, again, tasks=TASKS, thresholds=THRESHOLDS, method=DEFAULT_METHOD,
                  overlay=lambda image_id, task: run["tmp"] / "cam" / f"{image_id}_{task}.png")
    first = sorted(p.relative_to(run["out"]) for p in run["out"].glob("*/*.dcm"))
    assert first and first == sorted(p.relative_to(again) for p in again.glob("*/*.dcm"))
    for name in first:
        a, b = pydicom.dcmread(run["out"] / name), pydicom.dcmread(again / name)
        assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    reports = _outputs(run["out"], "SR")  # one SR series per study and model: a and b share it
    a, b = (pydicom.dcmread(run["folder"] / f"{x}.dcm", stop_before_pixels=True) for x in "ab")
    assert reports[a.SOPInstanceUID].SeriesInstanceUID == reports[b.SOPInstanceUID].SeriesInstanceUID
    row = run["frame"].iloc[0].to_dict()
    same = output_uids(a, row, "sr")
    assert output_uids(a, {**row, "model_step": float(row["model_step"])}, "sr") == same  # 3 == 3.0 from CSV
    moved = {"model": f"/elsewhere/{Path(row['model']).parts[-3]}/checkpoints/{row['model_step']}"}
    assert output_uids(a, {**row, **moved}, "sr") == same  # the run's name, wherever it lies
    for changed in ({"model_step": 4}, {"model": "other"}, {"calibration": "isotonic"},
                    {"saliency_method": "gradcam"}):
        assert output_uids(a, {**row, **changed}, "sr").instance != same.instance


def test_without_a_map_only_reports_and_the_service_call(run, tmp_path):
    """write_outputs without overlays (the ONNX backend's case) and structured_report alone
    (the HTTP service's call): SR only, said so; a level names its SNOMED CT vertebra."""
    done = write_outputs(run["frame"], tmp_path / "sr_only", tasks=TASKS)
    assert (done.reports, done.captures) == (3, 0)
    assert any("structured reports only" in line for line in done.summary())
    source = pydicom.dcmread(run["folder"] / "a.dcm", stop_before_pixels=True)
    row = {"pvf_prob": 0.8, "pvf_prob_raw": 0.7, "model": "m", "model_step": 7, "calibration": "isotonic",
           **LEVEL_ROW}
    sr = structured_report(source, row, tasks=("pvf",), thresholds={"pvf": 0.9})
    items = sr_items(sr)
    codes = {(i.ConceptCodeSequence[0].CodingSchemeDesignator, i.ConceptCodeSequence[0].CodeValue)
             for i in items if i.ValueType == "CODE"}
    assert ("SCT", "66794005") in codes and ("SCT", "260385009") in codes  # L1 vertebra; Negative
    assert {i.GraphicType for i in items if i.ValueType == "SCOORD"} == {"POINT", "POLYLINE"}
    assert structured_report(source, row, tasks=("pvf",)).SOPInstanceUID == sr.SOPInstanceUID


def test_arguments_and_a_folder_that_is_a_file(tmp_path):
    from vertex_jax.errors import UserError
    from vertex_jax.predict.__main__ import parse_args

    base = ["--checkpoint", "x", "--input", "y", "--out", "z.csv", "--thresholds", "t.json"]
    with pytest.raises(SystemExit):
        parse_args(base)  # --thresholds alone: nothing to use it
    assert parse_args([*base, "--dicom-out", "d"]).dicom_out == "d"
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        write_outputs(pd.DataFrame({"path": []}), tmp_path / "file", tasks=TASKS)


def test_dicom_out_imports_no_jax():
    code = ("import sys, vertex_jax.dicom_out.write, vertex_jax.dicom_out.report; "
            "sys.exit('jax' in sys.modules or 'flax' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

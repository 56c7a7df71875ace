"""``python -m vertex_jax.manifest``: a training manifest from a folder of DICOMs, checked
against what pydicom reads from the same files; and the identifiers predict's input table carries."""

import json

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from vertex_jax.data.dicom_ids import COLUMNS
from vertex_jax.data.manifest import load_manifest
from vertex_jax.manifest.__main__ import main as manifest
from vertex_jax.synthetic.dicom_write import write_dicom


@pytest.fixture
def folder(tmp_path):
    """Four DICOMs of three patients (one without PatientID), a PNG, a text file."""
    root = tmp_path / "pacs"
    (root / "study1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    specs = [("study1/a.dcm", "PAT1", "F", 71.0, "ACC1"), ("study1/b.dcm", "PAT1", "F", 71.0, "ACC2"),
             ("c.dcm", "PAT2", "M", None, "ACC3"), ("d.dcm", "", None, 66.0, "")]
    for rel, pid, sex, age, accession in specs:
        path = root / rel
        write_dicom(path, rng.integers(0, 4096, (40, 30), dtype=np.uint16), bits_stored=12, patient_id=pid,
                    patient_sex=sex, patient_age_years=age)
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = accession
        ds.save_as(path)
    cv2.imwrite(str(root / "e.png"), rng.integers(0, 255, (40, 30), dtype=np.uint8))
    (root / "notes.txt").write_text("not an image")
    return root


def _headers(path):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {column: str(ds.get(keyword, "")) for column, keyword in COLUMNS.items()}


def test_manifest_from_a_folder_with_labels_by_accession_number(folder, tmp_path, capsys):
    labels = pd.DataFrame({"accession_number": ["ACC1", "ACC3", "ACC9"], "pvf": ["1", "0", "1"],
                           "osteo": ["0", "1", "0"], "bmi": ["24.5", "", "30"]})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "out" / "manifest.csv"
    assert manifest([str(folder), "--out", str(out), "--labels", str(tmp_path / "labels.csv")]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("image_id")
    assert sorted(table.index) == ["c", "d", "e", "study1/a", "study1/b"]
    for image_id in ("study1/a", "study1/b", "c", "d"):  # identifiers as pydicom reads them
        assert {c: table.loc[image_id, c] for c in COLUMNS} == _headers(folder / f"{image_id}.dcm")
    assert table.loc["e", "sop_instance_uid"] == "" and table.loc["e", "patient_id"] == "e"
    assert table.loc["study1/a", "patient_id"] == table.loc["study1/b", "patient_id"] == "PAT1"
    assert table.loc["d", "patient_id"] == "d"  # no PatientID: its own patient, and counted
    assert (table.loc["study1/a", ["pvf", "osteo", "bmi"]] == ["1", "0", "24.5"]).all()
    assert table.loc["c", "pvf"] == "0" and table.loc["study1/b", "pvf"] == ""
    assert table.loc["study1/a", "sex"] == "F" and float(table.loc["study1/a", "age"]) == 71.0
    assert table.loc["study1/a", "clinical_source"] == "age=dicom;sex=dicom;bmi=csv"
    assert table.loc["c", "age"] == "" and "PatientAge" in table.loc["c", "clinical_notes"]
    report = json.loads((tmp_path / "out" / "manifest.csv.report.json").read_text())
    assert report["labels"]["joined_on"] == "accession_number" and report["labels"]["images_labelled"] == 2
    assert report["labels"]["first_unmatched_label_keys"] == ["ACC9"] and report["images_without_patient_id"] == 2
    assert report["skipped_files"][0]["path"].endswith("notes.txt") and report["patients"] == 4
    assert "label row(s) matching no image (e.g. ACC9)" in printed
    loaded = load_manifest(out)  # what main reads: paths resolve, values parse
    assert loaded["path"].map(lambda p: __import__("os").path.isfile(p)).all() and loaded["pvf"].notna().sum() == 2


def test_ambiguous_labels_are_refused(folder, tmp_path, capsys):
    pd.DataFrame({"dicom_patient_id": ["PAT1", "PAT1"], "pvf": ["1", "0"]}).to_csv(tmp_path / "l.csv", index=False)
    assert manifest([str(folder), "--out", str(tmp_path / "m.csv"), "--labels", str(tmp_path / "l.csv")]) == 2
    assert "PAT1" in capsys.readouterr().err and not (tmp_path / "m.csv").exists()


def test_predict_inputs_carry_the_identifiers_and_patient_id_from_the_header(folder):
    from vertex_jax.predict.inputs import collect_inputs

    table = collect_inputs(folder, "xray").table.set_index("image_id")
    for image_id in ("study1/a", "c"):
        assert {c: table.loc[image_id, c] for c in COLUMNS} == _headers(folder / f"{image_id}.dcm")
    assert table.loc["study1/a", "patient_id"] == "PAT1" and table.loc["d", "patient_id"] == "d"
    assert table.loc["e", "study_instance_uid"] == ""

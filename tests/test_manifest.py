"""Manifest validation and patient-level splits."""

import cv2
import numpy as np
import pandas as pd
import pytest

from vertex_jax.data.manifest import ManifestError, load_manifest, validate
from vertex_jax.data.splits import (VFA_FRACTIONS, XRAY_FRACTIONS, assign_splits,
                                    load_or_create_splits)


def _table(n: int, rng: np.random.Generator) -> pd.DataFrame:
    patients = [f"P{i // 2 if i % 5 == 0 else i}" for i in range(n)]  # some repeat patients
    return pd.DataFrame({
        "image_id": [f"img{i}" for i in range(n)], "patient_id": patients,
        "path": [f"images/img{i}.png" for i in range(n)], "domain": "xray",
        "pvf": rng.choice(["1", "0", "0", "0"], n), "osteo": rng.choice(["1", "0", "0"], n),
        "age": rng.uniform(50, 90, n).round(1).astype(str), "sex": rng.choice(["F", "M"], n),
        "bmi": rng.uniform(18, 32, n).round(1).astype(str)})


def test_valid_manifest_normalises_values(tmp_path):
    df = _table(6, np.random.default_rng(0))
    df.loc[1, "pvf"] = ""
    df.loc[2, "age"] = ""
    (tmp_path / "images").mkdir()
    for p in df["path"]:
        (tmp_path / p).write_bytes(b"x")
    df.to_csv(tmp_path / "m.csv", index=False)
    out = load_manifest(tmp_path / "m.csv")
    assert np.isnan(out.loc[1, "pvf"]) and np.isnan(out.loc[2, "age"])
    assert set(out["sex"].unique()) <= {0.0, 1.0}
    assert all(p.startswith(str(tmp_path)) for p in out["path"])


def test_every_problem_is_reported_at_once(tmp_path):
    df = _table(8, np.random.default_rng(1))
    df.loc[2, "pvf"] = "maybe"
    df.loc[3, "image_id"] = "img0"  # duplicate
    df.loc[4, "age"] = "NaN"
    df.loc[5, "bmi"] = "400"
    df.loc[6, "sex"] = "X"
    df.loc[7, "domain"] = "ct"
    with pytest.raises(ManifestError) as err:
        validate(df, tmp_path, source="m.csv")
    text = str(err.value)
    for expected in ["'pvf'", "unknown value(s) ['maybe'] at line(s) 4", "duplicate image_id",
                     "'age': not a number at line(s) 6", "'bmi': outside", "'sex'", "'domain'",
                     "missing file(s)"]:
        assert expected in text, expected
    assert len(err.value.problems) == 7


def test_missing_columns_named(tmp_path):
    df = _table(3, np.random.default_rng(2)).drop(columns=["bmi", "osteo"])
    with pytest.raises(ManifestError, match="missing column.*osteo, bmi"):
        validate(df, tmp_path)


def test_unreadable_csv(tmp_path):
    (tmp_path / "m.csv").write_text("")
    with pytest.raises(ManifestError, match="cannot read CSV"):
        load_manifest(tmp_path / "m.csv")


def _normalised(n: int, seed: int) -> pd.DataFrame:
    return validate(_table(n, np.random.default_rng(seed)), "/", check_files=False)


def test_splits_are_patient_level_stratified_and_seeded():
    df = _normalised(400, 3)
    split = assign_splits(df, XRAY_FRACTIONS, seed=7)
    # No patient in two splits.
    assert (df.assign(split=split).groupby("patient_id")["split"].nunique() == 1).all()
    # Proportions of patients close to the request.
    per_patient = df.assign(split=split).drop_duplicates("patient_id")["split"].value_counts(
        normalize=True)
    for name, frac in XRAY_FRACTIONS.items():
        assert abs(per_patient[name] - frac) < 0.03
    # Stratified: pVF prevalence similar across splits.
    prev = df.assign(split=split).groupby("split")["pvf"].mean()
    assert prev.max() - prev.min() < 0.08
    pd.testing.assert_series_equal(split, assign_splits(df, XRAY_FRACTIONS, seed=7))
    assert not split.equals(assign_splits(df, XRAY_FRACTIONS, seed=8))


def test_vfa_rule_30_70_and_saved_for_audit(tmp_path):
    df = _normalised(300, 4)
    path = tmp_path / "splits.csv"
    split = load_or_create_splits(df, path, VFA_FRACTIONS, seed=0)
    frac = df.assign(split=split).drop_duplicates("patient_id")["split"].value_counts(normalize=True)
    assert abs(frac["finetune"] - 0.3) < 0.02 and abs(frac["test"] - 0.7) < 0.02
    saved = pd.read_csv(path)
    assert list(saved["split"]) == list(split)
    # Re-loading reads the saved file, even with another seed.
    assert list(load_or_create_splits(df, path, VFA_FRACTIONS, seed=99)) == list(split)
    # A manifest with images the saved file does not know is an error, not a silent re-split.
    bigger = pd.concat([df, df.iloc[:1].assign(image_id="new")], ignore_index=True)
    with pytest.raises(ValueError, match="no split for image_id"):
        load_or_create_splits(bigger, path, VFA_FRACTIONS)


def test_manifest_split_column_wins_and_is_checked(tmp_path):
    df = _table(4, np.random.default_rng(5))
    df["split"] = ["train", "train", "val", "test"]
    df["patient_id"] = ["A", "A", "B", "C"]
    out = validate(df, tmp_path, check_files=False)
    assert list(load_or_create_splits(out, tmp_path / "s.csv", XRAY_FRACTIONS)) == list(df["split"])
    df.loc[1, "split"] = "val"
    with pytest.raises(ManifestError, match="more than one split"):
        validate(df, tmp_path, check_files=False)


# ------------------------------------------------------- every check, also with a column missing


def test_a_missing_column_does_not_hide_the_other_problems(tmp_path):
    df = _table(6, np.random.default_rng(3)).drop(columns=["bmi"])
    df.loc[1, "image_id"] = "img0"  # duplicate
    df.loc[2, "sex"] = "X"
    df.loc[3, "age"] = "old"
    with pytest.raises(ManifestError) as err:
        validate(df, tmp_path, source="m.csv")  # and no image file exists
    problems = err.value.problems
    assert problems[0] == "missing column(s): bmi"
    for expected in ["duplicate image_id ['img0'] at line(s) 2, 3",
                     "column 'sex': unknown value(s) ['X'] at line(s) 4",
                     "column 'age': not a number at line(s) 5", "missing file(s)"]:
        assert any(expected in p for p in problems), expected
    assert len(problems) == 5


def test_checks_of_present_columns_run_when_id_and_path_are_missing(tmp_path):
    df = _table(3, np.random.default_rng(4)).drop(columns=["image_id", "path", "patient_id"])
    df.loc[0, "domain"] = "ct"
    df["split"] = ["train", "nope", "test"]
    with pytest.raises(ManifestError) as err:
        validate(df, tmp_path)
    assert err.value.problems[0] == "missing column(s): image_id, patient_id, path"
    assert any("'domain'" in p for p in err.value.problems)
    assert any("'split'" in p for p in err.value.problems)


# ----------------------------------------------------------- clinical values from DICOM headers


def _dicom_with_header(path, *, sex=None, age=None, weight=None, size=None):
    """A small DICOM whose header carries the given patient values (None: absent)."""
    import pydicom

    from vertex_jax.synthetic.dicom_write import write_dicom

    write_dicom(path, np.zeros((16, 16), np.uint8), bits_stored=8)
    ds = pydicom.dcmread(path)
    for keyword, value in (("PatientSex", sex), ("PatientAge", age), ("PatientWeight", weight),
                           ("PatientSize", size)):
        if value is not None:
            setattr(ds, keyword, value)
    ds.save_as(path)


def test_header_values_parse_in_the_manifest_s_terms():
    from vertex_jax.data.dicom_clinical import parse_age, parse_bmi, parse_sex

    assert parse_age("065Y") == ("65", "") and parse_age("018M") == ("1.5", "")
    assert float(parse_age("052W")[0]) == pytest.approx(0.996, abs=1e-3) and parse_age("010D")[0] != ""
    assert parse_age("000Y")[0] == "" and "not recorded" in parse_age("000Y")[1]
    assert parse_age("65")[0] == "" and "nnnY" in parse_age("65")[1]
    assert parse_age("130Y")[0] == "" and "outside [0, 120]" in parse_age("130Y")[1]
    assert parse_sex("F") == ("F", "") and parse_sex(" m ") == ("M", "")
    assert parse_sex("O")[0] == "" and "other" in parse_sex("O")[1]
    assert parse_bmi(60, 1.6) == ("23.44", "")
    assert parse_bmi(0, 1.6)[0] == "" and "0 means not recorded" in parse_bmi(0, 1.6)[1]
    assert parse_bmi(70, 170)[0] == "" and "outside [8, 80]" in parse_bmi(70, 170)[1]  # height in cm
    assert parse_bmi(None, 1.7) == ("", "no PatientWeight")


def test_training_manifest_blanks_come_from_the_headers_and_the_csv_wins(tmp_path):
    (tmp_path / "images").mkdir()
    _dicom_with_header(tmp_path / "images/a.dcm", sex="F", age="071Y", weight=60, size=1.6)
    _dicom_with_header(tmp_path / "images/b.dcm", sex="O", age="069Y", weight=0, size=1.7)
    cv2.imwrite(str(tmp_path / "images/c.png"), np.zeros((16, 16), np.uint8))
    df = _table(3, np.random.default_rng(5))
    df["path"] = ["images/a.dcm", "images/b.dcm", "images/c.png"]
    df[["age", "sex", "bmi"]] = ""
    df.loc[0, "age"] = "80"  # the CSV wins over PatientAge 071Y
    df.to_csv(tmp_path / "m.csv", index=False)

    plain = load_manifest(tmp_path / "m.csv")
    assert plain["sex"].isna().all() and "clinical_source" not in plain.columns
    out = load_manifest(tmp_path / "m.csv", clinical_from_dicom=True)
    assert out["age"].tolist()[:2] == [80.0, 69.0] and np.isnan(out.loc[2, "age"])
    assert out.loc[0, "sex"] == 1.0 and np.isnan(out.loc[1, "sex"])  # F = 1.0; O stays missing
    assert out.loc[0, "bmi"] == pytest.approx(23.44) and np.isnan(out.loc[1, "bmi"])
    assert out["clinical_source"].tolist() == ["age=csv;sex=dicom;bmi=dicom", "age=dicom;sex=missing;bmi=missing",
                                               "age=missing;sex=missing;bmi=missing"]
    notes = out["clinical_notes"]
    assert "PatientSex O (other)" in notes[1] and "0 means not recorded" in notes[1]
    assert "not a DICOM file" in notes[2]

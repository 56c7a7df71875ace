"""Manifest validation and patient-level splits."""

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

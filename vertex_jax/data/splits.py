"""Patient-level, label-stratified splits, seeded and saved for audit.

Radiographs: train / val / test (default 70/15/15). DXA VFA (the paper's transfer
rule): a stratified 30% ``finetune`` / 70% ``test`` split. Patients are the unit: every
image of a patient lands in the same split. Strata are the patient's labels
(any pVF × any osteoporosis, missing as its own level).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from vertex_jax.files import atomic_path
from vertex_jax.tasks import TASKS
from vertex_jax.errors import ConfigError, InputDataError

XRAY_FRACTIONS = {"train": 0.70, "val": 0.15, "test": 0.15}
VFA_FRACTIONS = {"finetune": 0.30, "test": 0.70}


def patient_strata(df: pd.DataFrame) -> pd.Series:
    """One stratum label per patient: its maximum label per task, 'na' when unknown."""
    per_patient = df.groupby("patient_id")[list(TASKS)].max()
    return per_patient.apply(
        lambda r: "/".join("na" if np.isnan(v) else str(int(v)) for v in r), axis=1)


def _split_ids(ids: np.ndarray, strata: np.ndarray, fraction: float, seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Split ids into (fraction, rest), stratified where every stratum has two members."""
    counts = pd.Series(strata).value_counts()
    stratify = strata if len(counts) > 1 and counts.min() >= 2 else None
    n_take = int(round(fraction * len(ids)))
    if n_take in (0, len(ids)):
        return (ids, ids[:0]) if n_take else (ids[:0], ids)
    try:
        return tuple(train_test_split(ids, train_size=n_take, stratify=stratify, random_state=seed))
    except ValueError:  # a stratum too small for the requested sizes: fall back to random
        return tuple(train_test_split(ids, train_size=n_take, random_state=seed))


def assign_splits(df: pd.DataFrame, fractions: dict[str, float], seed: int = 0) -> pd.Series:
    """A split name per row of ``df``; patients never straddle splits.

    ``fractions`` are of patients, in order; they must sum to 1.
    """
    if not np.isclose(sum(fractions.values()), 1.0):
        raise ConfigError(f"split fractions must sum to 1, got {fractions}")
    strata = patient_strata(df)
    remaining, remaining_strata = strata.index.to_numpy(), strata.to_numpy()
    left = 1.0
    assignment: dict[str, str] = {}
    names = list(fractions)
    for i, name in enumerate(names):
        if i == len(names) - 1:
            taken = remaining
        else:
            taken, rest = _split_ids(remaining, remaining_strata, fractions[name] / left, seed + i)
            keep = np.isin(remaining, rest)
            remaining, remaining_strata = remaining[keep], remaining_strata[keep]
            left -= fractions[name]
        assignment.update(dict.fromkeys(taken, name))
    return df["patient_id"].map(assignment).rename("split")


def load_or_create_splits(df: pd.DataFrame, path: str | os.PathLike,
                          fractions: dict[str, float], seed: int = 0) -> pd.Series:
    """Splits from the manifest's ``split`` column, else from ``path``, else new ones saved there.

    The saved CSV (image_id, patient_id, split) is what makes a run auditable; an
    existing file that no longer matches the manifest's images is an error, not silently
    regenerated.
    """
    if "split" in df.columns and df["split"].notna().all() and (df["split"] != "").all():
        return df["split"].rename("split")
    path = Path(path)
    if path.exists():
        saved = pd.read_csv(path, dtype=str)
        lookup = dict(zip(saved["image_id"], saved["split"]))
        missing = [i for i in df["image_id"] if i not in lookup]
        if missing:
            raise InputDataError(f"{path}: no split for image_id(s) {missing[:5]} "
                             f"({len(missing)} in all); delete the file to re-split")
        return df["image_id"].map(lookup).rename("split")
    split = assign_splits(df, fractions, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pd.DataFrame({"image_id": df["image_id"], "patient_id": df["patient_id"],
                      "split": split}).to_csv(tmp, index=False)
    return split

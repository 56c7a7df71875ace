"""The manifest CSV: schema, validation that reports every problem at once, loading.

One row per image:

============  =======================================================================
column        meaning
============  =======================================================================
image_id      unique string id of the image
patient_id    patient (several images may share one; splits never cut a patient)
path          image file (DICOM, PNG, JPEG, TIFF), absolute or relative to the CSV
domain        ``xray`` (lateral spine radiograph) or ``vfa`` (DXA VFA)
pvf           prevalent vertebral fracture: 1, 0 or blank (unknown)
osteo         osteoporosis (T-score <= -2.5): 1, 0 or blank
age           years (blank allowed)
sex           ``F``/``M`` (also female/male, 1=F/0=M; blank allowed)
bmi           kg/m² (blank allowed)
split         optional: ``train``/``val``/``test`` (or ``finetune``/``test`` for VFA)
============  =======================================================================

Other columns are kept and ignored.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from vertex_jax.data.clinical import RANGES
from vertex_jax.data.dicom_clinical import fill_from_headers
from vertex_jax.problems import ProblemsError
from vertex_jax.tasks import DOMAINS, TASKS

REQUIRED = ("image_id", "patient_id", "path", "domain", "pvf", "osteo", "age", "sex", "bmi")
SPLITS = ("train", "val", "test", "finetune")
_SEX = {"f": 1.0, "female": 1.0, "1": 1.0, "m": 0.0, "male": 0.0, "0": 0.0}
_LABEL = {"1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "true": 1.0, "false": 0.0}


class ManifestError(ProblemsError):
    """Every problem found in a manifest, one per line."""

    todo = "fix these in the CSV (columns: docs/data.md, 'Manifest') and re-run; every problem is listed at once"

    def subject(self) -> str:
        return "the manifest"


def _rows(mask: pd.Series, limit: int = 10) -> str:
    """CSV line numbers (header = line 1) of the rows where ``mask`` holds."""
    lines = [str(i + 2) for i in np.flatnonzero(mask.to_numpy())]
    return ", ".join(lines[:limit]) + (f" (+{len(lines) - limit} more)" if len(lines) > limit else "")


def _parse(col: pd.Series, mapping: dict[str, float], name: str, problems: list[str]) -> pd.Series:
    text = col.astype("string").str.strip().str.lower()
    blank = text.isna() | (text == "")
    values = text.map(mapping)
    bad = ~blank & values.isna()
    if bad.any():
        seen = sorted(set(col[bad].astype(str)))[:5]
        problems.append(f"column '{name}': unknown value(s) {seen} at line(s) {_rows(bad)}")
    return values.astype("float64")


def _numeric(col: pd.Series, name: str, problems: list[str]) -> pd.Series:
    text = col.astype("string").str.strip()
    blank = text.isna() | (text == "")
    values = pd.to_numeric(text.where(~blank), errors="coerce")
    if (bad := ~blank & values.isna()).any():
        problems.append(f"column '{name}': not a number at line(s) {_rows(bad)}")
    lo, hi = RANGES[name]
    if (out := values.notna() & ((values < lo) | (values > hi))).any():
        problems.append(f"column '{name}': outside [{lo:g}, {hi:g}] at line(s) {_rows(out)}")
        values = values.where(~out)
    return values.astype("float64")


def validate(df: pd.DataFrame, root: str | os.PathLike, source: str = "manifest",
             check_files: bool = True) -> pd.DataFrame:
    """Check and normalise a manifest table; raise :class:`ManifestError` listing all problems.

    Every check that can run does, also when columns are missing (those are listed first).
    Returns a copy with labels and clinical values as float (NaN = missing), ``sex`` as
    1.0 female / 0.0 male, and ``path`` made absolute.
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    problems = [f"missing column(s): {', '.join(missing)}"] if missing else []
    out = df.copy()
    has = set(out.columns)
    for key in ("image_id", "patient_id", "path"):
        if key not in has:
            continue
        text = out[key].astype("string").str.strip()
        if (empty := text.isna() | (text == "")).any():
            problems.append(f"column '{key}': empty at line(s) {_rows(empty)}")
        out[key] = text
    if "image_id" in has and (dup := out["image_id"].duplicated(keep=False) & out["image_id"].notna()).any():
        problems.append(f"duplicate image_id {sorted(set(out['image_id'][dup]))[:5]} "
                        f"at line(s) {_rows(dup)}")
    if "domain" in has:
        domain = out["domain"].astype("string").str.strip().str.lower()
        if (bad := ~domain.isin(DOMAINS)).any():
            problems.append(f"column 'domain': expected one of {DOMAINS} at line(s) {_rows(bad)}")
        out["domain"] = domain
    for task in (t for t in TASKS if t in has):
        out[task] = _parse(out[task], _LABEL, task, problems)
    if "sex" in has:
        out["sex"] = _parse(out["sex"], _SEX, "sex", problems)
    for name in (n for n in ("age", "bmi") if n in has):
        out[name] = _numeric(out[name], name, problems)
    if "split" in has:
        split = out["split"].astype("string").str.strip().str.lower()
        if (bad := split.notna() & (split != "") & ~split.isin(SPLITS)).any():
            problems.append(f"column 'split': expected one of {SPLITS} at line(s) {_rows(bad)}")
        out["split"] = split
        mixed = (out.groupby("patient_id")["split"].nunique(dropna=True) > 1 if "patient_id" in has
                 else pd.Series(dtype=bool))
        if mixed.any():
            problems.append(f"patient(s) {list(mixed[mixed].index[:5])} appear in more than one split")
    root = Path(root)
    if "path" in has:
        out["path"] = [str(p if Path(p).is_absolute() else root / p) if isinstance(p, str) else p
                       for p in out["path"]]
    if check_files and "path" in has:
        absent = out["path"].map(lambda p: isinstance(p, str) and not os.path.isfile(p))
        if absent.any():
            names = [Path(p).name for p in out["path"][absent][:5]]
            problems.append(f"missing file(s) {names} at line(s) {_rows(absent)}")
    if problems:
        raise ManifestError(source, problems)
    return out.reset_index(drop=True)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV as text (blank = ""); :class:`ManifestError` when it cannot be read."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ManifestError(str(path), [f"cannot read CSV: {e}"]) from e


def load_manifest(path: str | os.PathLike, check_files: bool = True,
                  clinical_from_dicom: bool = False) -> pd.DataFrame:
    """Read and validate a manifest CSV (relative image paths resolve against its folder).

    With ``clinical_from_dicom`` blank age/sex/bmi are first filled from the DICOM headers
    (:func:`vertex_jax.data.dicom_clinical.fill_from_headers`; the CSV wins).
    """
    path = Path(path)
    df = read_csv(path)
    if clinical_from_dicom and "path" in df.columns:
        df = fill_from_headers(df, path.parent)
    return validate(df, path.parent, source=str(path), check_files=check_files)

"""The DICOM identifiers of an image: what joins a score to its study and files it back.

``scores.csv`` (``predict``) and ``manifest`` (:mod:`vertex_jax.manifest`) carry, for every
DICOM input, PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID and
AccessionNumber as the columns of :data:`COLUMNS` (blank for PNG/JPEG/TIFF and for a tag a
file lacks). Only the header is read.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pydicom

from vertex_jax.data.io import is_dicom

# manifest / scores.csv column -> DICOM keyword
COLUMNS: dict[str, str] = {"dicom_patient_id": "PatientID", "study_instance_uid": "StudyInstanceUID",
                           "series_instance_uid": "SeriesInstanceUID", "sop_instance_uid": "SOPInstanceUID",
                           "accession_number": "AccessionNumber"}


def read_identifiers(path: str | os.PathLike) -> dict[str, str]:
    """The identifier columns of one file ("" where absent, unreadable or not DICOM)."""
    blank = dict.fromkeys(COLUMNS, "")
    if not is_dicom(path):
        return blank
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(COLUMNS.values()))
    except Exception:  # noqa: BLE001 - an unreadable header only means no identifiers
        return blank
    return {column: str(ds.get(keyword, "") or "").strip() for column, keyword in COLUMNS.items()}


def add_identifiers(df: pd.DataFrame, root: str | os.PathLike) -> pd.DataFrame:
    """``df`` with the identifier columns of each row's ``path`` (relative to ``root``); a
    column the table already has is kept where it is not blank."""
    found = pd.DataFrame([read_identifiers(Path(root) / p) if isinstance(p, str) and p else dict.fromkeys(COLUMNS, "")
                          for p in df["path"]], index=df.index)
    out = df.copy()
    for column in COLUMNS:
        given = out[column].fillna("").astype(str).str.strip() if column in out.columns else None
        out[column] = found[column] if given is None else given.where(given != "", found[column])
    return out

"""The source image's header as the outputs inherit it: patient and study attributes every
output must carry (Type 2: present, may be empty) are added empty where the header lacks
them, as an absent Type 2 value means "unknown" either way; nothing else changes."""

from __future__ import annotations

import os

import pydicom

# Patient and General Study attributes of Type 2 the SR/SC copy from their evidence
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
         "StudyDate", "StudyTime", "ReferringPhysicianName")
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


def read_header(path: str | os.PathLike) -> pydicom.Dataset:
    """The header of a DICOM file (no pixels)."""
    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def missing_identifiers(source: pydicom.Dataset) -> list[str]:
    """The UIDs an output needs to reference its source that the header lacks."""
    return [k for k in REQUIRED if not str(source.get(k, "") or "").strip()]


def completed(source: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``source`` with every :data:`TYPE2` attribute present (empty where absent)."""
    out = pydicom.Dataset()
    out.update(source)
    if hasattr(source, "file_meta"):
        out.file_meta = source.file_meta
    for keyword in TYPE2:
        if keyword not in out:
            setattr(out, keyword, None)
    return out

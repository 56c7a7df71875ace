"""Age, sex and BMI from DICOM headers, for rows whose manifest/CSV leaves them blank.

Read on request (``predict --clinical-from-dicom``, ``data.clinical_from_dicom``):

- age from PatientAge (0010,1010), ``nnnY``, ``nnnM``, ``nnnW`` or ``nnnD``, in years;
- sex from PatientSex (0010,0040): ``F`` / ``M`` as the manifest codes them; ``O`` (other)
  is left missing, the model knows only the two codes;
- BMI from PatientWeight (0010,1030, kg) / PatientSize (0010,1020, m) squared.

A value of 0, one that does not parse, or one outside the manifest's plausible range
(:data:`vertex_jax.data.clinical.RANGES`) is missing, with the reason. The CSV wins over
the header: a header value only fills a blank. :func:`fill_from_headers` records per row
where each value came from (``clinical_source``, e.g. ``age=csv;sex=dicom;bmi=missing``)
and why a header value was not used (``clinical_notes``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pandas as pd
import pydicom

from vertex_jax.data.io import is_dicom
from vertex_jax.data.clinical import CLINICAL, RANGES

_AGE = re.compile(r"^\s*(\d{1,3})\s*([YMWD])\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
_HEADER_TAGS = ("PatientAge", "PatientSex", "PatientWeight", "PatientSize")


@dataclasses.dataclass(frozen=True)
class HeaderClinical:
    """Manifest-style text values ("" = missing) and, per missing value, the reason."""

    values: dict[str, str]
    notes: dict[str, str]


def _plausible(name: str, value: float, what: str) -> tuple[str, str]:
    lo, hi = RANGES[name]
    if not lo <= value <= hi:
        return "", f"{what} gives {name} {value:g}, outside [{lo:g}, {hi:g}]"
    return f"{value:.4g}", ""


def parse_age(text: str | None) -> tuple[str, str]:
    """(years as text, "") from a PatientAge string, or ("", reason)."""
    if not text:
        return "", "no PatientAge"
    match = _AGE.match(str(text))
    if not match:
        return "", f"PatientAge {str(text)!r} is not nnnY/M/W/D"
    number, unit = int(match.group(1)), match.group(2).upper()
    if number == 0 and unit == "Y":
        return "", "PatientAge 000Y (not recorded)"
    return _plausible("age", number * _AGE_UNIT_YEARS[unit], f"PatientAge {text}")


def parse_sex(text: str | None) -> tuple[str, str]:
    """("F" or "M", "") from PatientSex, or ("", reason)."""
    code = str(text or "").strip().upper()
    if code in ("F", "M"):
        return code, ""
    if code == "O":
        return "", "PatientSex O (other) has no code in the model"
    return "", f"PatientSex {code!r} is not F/M" if code else "no PatientSex"


def parse_bmi(weight_kg: object, size_m: object) -> tuple[str, str]:
    """(BMI as text, "") from PatientWeight and PatientSize, or ("", reason)."""
    try:
        weight = float(weight_kg) if weight_kg not in (None, "") else None
        size = float(size_m) if size_m not in (None, "") else None
    except (TypeError, ValueError):
        return "", f"PatientWeight {weight_kg!r} / PatientSize {size_m!r} are not numbers"
    if weight is None or size is None:
        absent = [n for n, v in (("PatientWeight", weight), ("PatientSize", size)) if v is None]
        return "", f"no {' or '.join(absent)}"
    if weight <= 0 or size <= 0:
        return "", f"PatientWeight {weight:g} kg / PatientSize {size:g} m (0 means not recorded)"
    return _plausible("bmi", weight / size**2, f"PatientWeight {weight:g} kg / PatientSize {size:g} m")


def read_header_clinical(path: str | os.PathLike) -> HeaderClinical:
    """Age, sex and BMI of one DICOM file's header (pixel data is not read)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=list(_HEADER_TAGS))
        fields = {tag: ds.get(tag) for tag in _HEADER_TAGS}
    except Exception as e:  # noqa: BLE001 - an unreadable header only means no values
        reason = f"header unreadable ({type(e).__name__})"
        return HeaderClinical(dict.fromkeys(CLINICAL, ""), dict.fromkeys(CLINICAL, reason))
    parsed = {"age": parse_age(fields["PatientAge"]), "sex": parse_sex(fields["PatientSex"]),
              "bmi": parse_bmi(fields["PatientWeight"], fields["PatientSize"])}
    return HeaderClinical({k: v for k, (v, _) in parsed.items()},
                          {k: why for k, (v, why) in parsed.items() if why})


def fill_from_headers(df: pd.DataFrame, root: str | os.PathLike) -> pd.DataFrame:
    """Fill blank age/sex/bmi of a raw (text) manifest table from the DICOM headers of its
    ``path`` files (relative to ``root``); add ``clinical_source`` and ``clinical_notes``."""
    out = df.copy()
    for column in CLINICAL:
        if column not in out.columns:
            out[column] = ""
    text = out[list(CLINICAL)].fillna("").astype(str).apply(lambda c: c.str.strip())
    sources, notes = [], []
    for i, path in enumerate(out["path"]):
        blank = [c for c in CLINICAL if not text.iloc[i][c]]
        source, note = dict.fromkeys(CLINICAL, "csv"), []
        file = Path(root) / path if isinstance(path, str) and path else None
        if blank and file is not None and is_dicom(file):
            header = read_header_clinical(file)
            for c in blank:
                out.iloc[i, out.columns.get_loc(c)] = header.values[c]
                source[c] = "dicom" if header.values[c] else "missing"
                note += [f"{c}: {header.notes[c]}"] if c in header.notes else []
        elif blank:
            source.update(dict.fromkeys(blank, "missing"))
            note.append("not a DICOM file: no header to read")
        sources.append(";".join(f"{c}={source[c]}" for c in CLINICAL))
        notes.append("; ".join(note))
    out["clinical_source"], out["clinical_notes"] = sources, notes
    return out


def source_summary(sources: pd.Series) -> str:
    """One line: how many rows took each value from the header (``clinical_source`` column)."""
    counts = ", ".join(f"{c} for {int(sources.str.contains(f'{c}=dicom', regex=False).sum())}"
                       for c in CLINICAL)
    return f"from the DICOM headers: {counts} image(s) (columns clinical_source, clinical_notes)"

"""Declared dataset shifts: named changes of the synthetic cohort for external validation.

A model is trusted once it holds on data from elsewhere: another scanner, another
population, another way of taking the picture. Each preset changes some of the generator's
knobs (:class:`vertex_jax.synthetic.cohort.CohortConfig`, and the file formats) and
declares which manifest columns it may change; the random draws stay the same, so with the
same seed the same patients get the same exams and only what is declared differs.

- ``scanner``: vendors the training cohort never shows (stronger edge enhancement, other
  bit depths), half the DICOMs MONOCHROME1, compressed DICOM only, 30% less dose.
- ``population``: older (mean 75 years), 80% women, T-scores 0.5 lower, and a higher
  fracture prevalence (pVF logit +0.4): other prevalences and other clinical values.
- ``acquisition``: half the dose (noisier), the spine rotated three times as much
  (sd 7.5 degrees), and tighter collimation (the spine 20% larger in the frame, its ends
  may be cut off).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vertex_jax.errors import ConfigError

PATIENT_COLUMNS = ("patient_id", "pvf", "osteo", "age", "sex", "bmi", "t_score", "fracture_levels",
                   "fracture_type", "fracture_grades", "genant_grade")
FILE_COLUMNS = ("format", "photometric", "compression")
GEOMETRY_COLUMNS = ("height", "width", "pixel_spacing_mm")


@dataclasses.dataclass(frozen=True)
class Shift:
    """A named change of the generator: its options, formats and what it may change."""

    name: str
    description: str
    options: Mapping[str, Any]
    formats: str | None  # None: the cohort's own mix
    changes: tuple[str, ...]  # manifest columns that may differ from the unshifted cohort
    changes_pixels: bool = True
    changes_annotations: bool = False  # vertebra boxes (the spine's place in the image)


SHIFTS: dict[str, Shift] = {s.name: s for s in (
    Shift("scanner", "vendors never seen in training, other bit depths, half MONOCHROME1, compressed "
          "DICOM only, 30% less dose",
          {"vendors": "other", "monochrome1_fraction": 0.5, "dose": 0.7}, "jpegls,jpeg2000,jpeg-lossless",
          ("vendor", "bits_stored", *FILE_COLUMNS)),
    Shift("population", "older (mean age 75), 80% women, T-scores 0.5 lower, fracture logit +0.4",
          {"age_mean": 75.0, "age_sd": 7.0, "female_fraction": 0.8, "t_score_offset": -0.5,
           "pvf_offset": 0.4},
          None, (*PATIENT_COLUMNS[1:], "pixel_spacing_mm"), changes_annotations=True),
    Shift("acquisition", "half the dose, rotation sd 7.5 degrees, tighter collimation (spine 20% larger "
          "in the frame)",
          {"dose": 0.5, "tilt_sd_deg": 7.5, "field_scale": 1.2}, None, ("pixel_spacing_mm",),
          changes_annotations=True),
)}


def get_shift(name: str) -> Shift:
    """The preset called ``name`` (a ConfigError listing the presets otherwise)."""
    if name not in SHIFTS:
        raise ConfigError(f"unknown shift {name!r}", todo=f"choose one of {', '.join(SHIFTS)}")
    return SHIFTS[name]


def apply_shift(options: Mapping[str, Any], formats: str, shift: str | None
                ) -> tuple[dict[str, Any], str]:
    """(generator options, formats) of a cohort with ``shift`` applied over ``options``."""
    if shift is None:
        return dict(options), formats
    preset = get_shift(shift)
    return {**options, **preset.options}, preset.formats or formats

"""Which cases a calibration was fitted on, kept without identifiers.

A site calibration (``calibrate --manifest``) stores a short hash of each fitted case's
``image_id`` in its ``fitted_on``; an evaluation that would include any of them is refused
(:func:`check_disjoint`): a calibration judged on its own fitting cases looks better than it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from vertex_jax.calibrate.maps import Calibration, CalibrationError

KEY = "case_keys"


def case_keys(image_ids: Iterable[Any]) -> list[str]:
    """Sorted 16-hex-digit SHA-256 prefixes of the image ids (no identifier is stored)."""
    return sorted({hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in image_ids})


def check_disjoint(calibration: Calibration | None, image_ids: Iterable[Any], where: str) -> None:
    """Refuse to evaluate cases the calibration was fitted on (CalibrationError naming how many)."""
    fitted = set((calibration.fitted_on.get(KEY) or []) if calibration else [])
    if not fitted:
        return
    overlap = fitted & set(case_keys(image_ids))
    if overlap:
        raise CalibrationError(
            f"{len(overlap)} of the cases to evaluate are cases the model's calibration was fitted on "
            f"({calibration.fitted_on.get('manifest', 'a site sample')})", where=where,
            todo="evaluate on cases the calibration has not seen (validate --recalibrate writes them "
                 "as rest.csv), or refit the calibration on other cases")


def draw_local(patient_ids: Sequence[Any], n: int, seed: int = 0) -> np.ndarray:
    """Mask of about ``n`` cases drawn as whole patients in a seeded random order (a patient's
    images all go in or all stay out); every case when ``n`` covers them all."""
    ids = pd.Series(list(patient_ids), dtype=str)
    if n >= len(ids):
        return np.ones(len(ids), bool)
    order = np.random.default_rng(seed).permutation(ids.unique())
    sizes = ids.value_counts()
    taken = order[: int(np.searchsorted(np.cumsum(sizes[order].to_numpy()), n) + 1)]
    return ids.isin(set(taken)).to_numpy()

"""Site recalibration: the model's calibration refitted on a small labelled local sample,
its thresholds re-chosen there, both judged on the site's other cases; weights untouched."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from vertex_jax.calibrate.cases import KEY, case_keys
from vertex_jax.calibrate.maps import Calibration, CalibrationError, fit_calibration
from vertex_jax.evaluate.thresholds import choose_thresholds


@dataclasses.dataclass(frozen=True)
class SiteFit:
    """The site's calibration, the thresholds chosen on its sample, and the rest rescored."""

    calibration: Calibration
    thresholds: dict[str, dict[str, float | None]]  # thresholds.json format
    chosen: dict[str, dict]  # per task and operating point: threshold, sensitivity, specificity on the sample
    rest: pd.DataFrame  # the other cases' scores with the site's probabilities


def _labels_logits(scores: pd.DataFrame, tasks: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.stack([pd.to_numeric(scores[t], errors="coerce").to_numpy(float) if t in scores
                       else np.full(len(scores), np.nan) for t in tasks], axis=1)
    logits = np.stack([scores[f"{t}_logit"].to_numpy(float) for t in tasks], axis=1)
    return labels, logits


def fit_site(scores: pd.DataFrame, local: np.ndarray, tasks: Sequence[str], method: str,
             fitted_on: dict, previous: Calibration | None) -> SiteFit:
    """Fit ``method`` (``intercept``: update ``previous``, the model's calibration) on the
    ``local`` rows' logits, choose thresholds on their new probabilities, and rescore the
    other rows."""
    sample = scores[local]
    labels, logits = _labels_logits(sample, tasks)
    known = ~np.isnan(labels)
    calibration, skipped = fit_calibration(method, logits, np.nan_to_num(labels), known, tasks,
                                           {**fitted_on, KEY: case_keys(sample["image_id"])}, previous)
    for task, why in skipped.items():
        logging.warning("site calibration of %s not fitted (%s)", task, why)
    if not calibration.maps:
        raise CalibrationError(f"no task could be calibrated on the {len(sample)} local case(s)")
    probs = calibration.probabilities(logits, tasks)
    chosen = {t: choose_thresholds(labels[known[:, i], i] == 1, probs[known[:, i], i])
              for i, t in enumerate(tasks) if t in calibration.maps}
    rest = scores[~local].reset_index(drop=True).copy()
    _, rest_logits = _labels_logits(rest, tasks)
    rest_probs = calibration.probabilities(rest_logits, tasks)
    for i, task in enumerate(tasks):
        if task in calibration.maps:
            rest[f"{task}_prob"] = rest_probs[:, i]
    rest["calibration"] = f"site {method}"
    thresholds = {t: {name: point["threshold"] for name, point in points.items()} for t, points in chosen.items()}
    return SiteFit(calibration, thresholds, chosen, rest)

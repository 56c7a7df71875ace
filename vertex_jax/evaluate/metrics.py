"""Every number for one set of cases: size, AUROC, operating points, calibration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from vertex_jax.evaluate.calibration import calibration_summary
from vertex_jax.evaluate.intervals import LEVEL, rng_for
from vertex_jax.evaluate.roc import auroc_summary, roc_curve
from vertex_jax.evaluate.subgroups import Subgroup, size_notes
from vertex_jax.evaluate.thresholds import OPERATING_POINTS, operating_point


def evaluate_group(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, dict], *, n_boot: int,
                   seed: int, key: Sequence[str], n_bins: int = 10, level: float = LEVEL,
                   curve: bool = False, ece_interval: bool = False) -> dict:
    """Metrics of probabilities ``p`` against labels ``y``.

    thresholds: operating point -> {"threshold": float | None, "reason": ...}.
    key: names that, with ``seed``, fix the bootstrap resamples (the same for every
    statistic of this group and for every model compared on it).
    curve: also return the ROC curve points. ece_interval: bootstrap the expected
    calibration error too (for all cases; subgroups report its value only).
    """
    y, p = np.asarray(y, bool), np.asarray(p, float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out: dict = {"n": n_pos + n_neg, "positives": n_pos, "negatives": n_neg,
                 "prevalence": n_pos / (n_pos + n_neg) if n_pos + n_neg else None,
                 "notes": size_notes(n_pos, n_neg)}
    if not n_pos + n_neg:
        return out
    out["auroc"] = auroc_summary(y, p, n_boot=n_boot, rng=rng_for(seed, *key), level=level)
    points = {}
    for name in OPERATING_POINTS:
        chosen = thresholds.get(name) or {"threshold": None, "reason": "no threshold"}
        if chosen["threshold"] is None:
            points[name] = {"threshold": None, "reason": chosen.get("reason", "no threshold")}
        else:
            points[name] = operating_point(y, p, chosen["threshold"], n_boot=n_boot,
                                           rng=rng_for(seed, *key), level=level)
    out["operating_points"] = points
    out["calibration"] = calibration_summary(y, p, n_bins, level, n_boot=n_boot if ece_interval else 0,
                                             rng=rng_for(seed, *key, "ece"))
    if curve:
        fpr, tpr, thr = roc_curve(y, p)
        out["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}
    return out


def evaluate_task(y: np.ndarray, p: np.ndarray, thresholds: Mapping[str, dict],
                  subgroups: Sequence[Subgroup], *, task: str, **kwargs) -> dict:
    """``evaluate_group`` on all cases (with the ROC curve and the ECE interval) and on each subgroup."""
    overall = evaluate_group(y, p, thresholds, key=(task, "all"), curve=True, ece_interval=True, **kwargs)
    groups = [{"variable": g.variable, "group": g.group,
               **evaluate_group(y[g.mask], p[g.mask], thresholds, key=(task, g.variable, g.group), **kwargs)}
              for g in subgroups]
    return {"overall": overall, "subgroups": groups}

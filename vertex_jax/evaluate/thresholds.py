"""Operating points: thresholds chosen on one split, classification metrics on another.

A case is called positive when ``p >= threshold``. Thresholds are observed scores of the
threshold split (as in ``sklearn.metrics.roc_curve``):

- ``youden``: maximises sensitivity + specificity - 1 (ties: the highest threshold);
- ``sensitivity_90``: the highest threshold with sensitivity >= 0.90 (best specificity at that sensitivity);
- ``specificity_90``: the lowest threshold with specificity >= 0.90 (best sensitivity at that specificity).

Metrics: sensitivity, specificity, PPV, NPV and accuracy with Wilson score intervals;
F1 with a stratified percentile-bootstrap interval.

``thresholds.json`` (written by the report, read back by ``--thresholds`` here and by
:mod:`vertex_jax.prognosis`): ``{task: {operating point: cut-off or null}}``, read by
:func:`read_thresholds`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vertex_jax.evaluate.intervals import LEVEL, percentile_interval, stratified_weights, wilson
from vertex_jax.evaluate.roc import roc_curve
from vertex_jax.problems import ProblemsError

OPERATING_POINTS = ("youden", "sensitivity_90", "specificity_90")
TARGET = 0.90


def choose_thresholds(y: np.ndarray, p: np.ndarray) -> dict[str, dict]:
    """For each operating point: ``threshold`` and the sensitivity/specificity it has on (y, p);
    ``threshold`` None with a ``reason`` where it cannot be chosen."""
    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        reason = f"threshold split has only one class (positives {n_pos}, negatives {n_neg})"
        return {name: {"threshold": None, "reason": reason} for name in OPERATING_POINTS}
    fpr, tpr, thr = (a[1:] for a in roc_curve(y, p))  # drop the +inf point
    tps, fps = np.rint(tpr * n_pos), np.rint(fpr * n_neg)
    picks = {"youden": int(np.argmax(tpr - fpr)),
             "sensitivity_90": int(np.flatnonzero(tps >= TARGET * n_pos - 1e-9)[0])}
    spec_ok = np.flatnonzero(n_neg - fps >= TARGET * n_neg - 1e-9)
    out: dict[str, dict] = {}
    if spec_ok.size:
        picks["specificity_90"] = int(spec_ok[-1])
    else:
        out["specificity_90"] = {"threshold": None, "reason": "no threshold calling any case positive "
                                 f"reaches specificity {TARGET:.2f} on the threshold split"}
    for name, i in picks.items():
        out[name] = {"threshold": float(thr[i]), "sensitivity": float(tpr[i]),
                     "specificity": float(1 - fpr[i])}
    return {name: out[name] for name in OPERATING_POINTS}


def _ratio(k: int, n: int, what: str, level: float) -> dict:
    if n == 0:
        return {"value": None, "ci": None, "reason": f"no {what}"}
    return {"value": k / n, "ci": wilson(k, n, level)}


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float, *, n_boot: int,
                    rng: np.random.Generator, level: float = LEVEL) -> dict:
    """Confusion counts and metrics at ``p >= threshold``."""
    y = np.asarray(y, bool)
    called = np.asarray(p, float) >= threshold
    tp, fn = int((called & y).sum()), int((~called & y).sum())
    fp, tn = int((called & ~y).sum()), int((~called & ~y).sum())
    out = {"threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
           "sensitivity": _ratio(tp, tp + fn, "positives", level),
           "specificity": _ratio(tn, tn + fp, "negatives", level),
           "ppv": _ratio(tp, tp + fp, "cases called positive", level),
           "npv": _ratio(tn, tn + fn, "cases called negative", level),
           "accuracy": _ratio(tp + tn, tp + tn + fp + fn, "cases", level)}
    if tp + fn == 0:
        out["f1"] = {"value": None, "ci": None, "reason": "no positives"}
    else:
        reps = _bootstrap_f1(called[y], called[~y], n_boot, rng)
        out["f1"] = {"value": 2 * tp / (2 * tp + fp + fn), "ci": percentile_interval(reps, level)}
    return out


def _bootstrap_f1(called_pos: np.ndarray, called_neg: np.ndarray, n_boot: int,
                  rng: np.random.Generator) -> np.ndarray:
    n_pos = called_pos.size
    reps = []
    for w_pos, w_neg in stratified_weights(n_pos, called_neg.size, n_boot, rng):
        tp = w_pos @ called_pos.astype(float)
        fp = w_neg @ called_neg.astype(float)
        reps.append(2 * tp / (tp + fp + n_pos))  # 2TP / (2TP + FP + FN), FN = n_pos - TP
    return np.concatenate(reps) if reps else np.empty(0)


def fixed_thresholds(spec: Mapping[str, Mapping[str, float | None]], source: str) -> dict[str, dict[str, dict]]:
    """Thresholds given in the thresholds.json format ({task: {operating point: value}}), checked
    and put in the form ``choose_thresholds`` returns. Raises ProblemsError (a ValueError)
    naming every bad entry."""
    problems, out = [], {}
    for task, points in spec.items():
        if not isinstance(points, Mapping):
            problems.append(f"'{task}': expected an object of operating points, got {points!r}")
            continue
        out[task] = {}
        for name, value in points.items():
            if name not in OPERATING_POINTS:
                problems.append(f"'{task}.{name}': unknown operating point (known: {', '.join(OPERATING_POINTS)})")
            elif value is None:
                out[task][name] = {"threshold": None, "reason": f"null in {source}"}
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                problems.append(f"'{task}.{name}': expected a number in [0, 1] or null, got {value!r}")
            else:
                out[task][name] = {"threshold": float(value), "source": source}
    if problems:
        raise ProblemsError(source, problems)
    return out


def read_thresholds(path: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """A ``thresholds.json`` file, checked by :func:`fixed_thresholds`. Raises ProblemsError
    naming the file when it is missing, not JSON, or holds a bad entry."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProblemsError(str(path), ["file not found"]) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ProblemsError(str(path), [f"cannot read JSON: {e}"]) from None
    if not isinstance(spec, Mapping):
        raise ProblemsError(str(path), ["expected an object {task: {operating point: cut-off}}"])
    return fixed_thresholds(spec, str(path))

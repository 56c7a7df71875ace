"""AUROC, the ROC curve, DeLong variance/covariance and the stratified bootstrap of AUROC.

Scores may be any real numbers (higher = more likely positive); labels are 0/1.
The AUROC and the ROC curve are scikit-learn's (``roc_auc_score``, ``roc_curve``): every
AUROC of the package comes from :func:`auroc`. DeLong et al. (1988) structural components
are computed from mid-ranks (Sun & Xu 2014), O(n log n), and give the same numbers as pROC's
``var``, ``cov``, ``ci.auc`` and ``roc.test``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics
from sklearn.exceptions import UndefinedMetricWarning

from vertex_jax.evaluate.intervals import LEVEL, percentile_interval, stratified_weights, z_value


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, highest first, rule ``p >= threshold``:
    ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.

    The first point is (0, 0) at threshold +inf (nothing called positive). With one class
    the rates of the absent class are NaN.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return metrics.roc_curve(np.asarray(y, bool), np.asarray(p, float), drop_intermediate=False)


def auroc(y: np.ndarray, p: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score``: ties count one half),
    cases weighted by ``sample_weight`` if given; NaN with only one class."""
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return float("nan")
    return float(metrics.roc_auc_score(y, np.asarray(p, float), sample_weight=sample_weight))


def delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong placement values V10 (k, n_pos), V01 (k, n_neg) for scores (k, n).

    V10[i] is the fraction of negatives scored below positive i (ties count one half);
    V01[j] the fraction of positives scored above negative j (their means are the AUROC).
    """
    y = np.asarray(y, bool)
    scores = np.atleast_2d(np.asarray(scores, float))
    pos, neg = scores[:, y], scores[:, ~y]
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    both = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (both[:, :n_pos] - rankdata(pos, axis=1)) / n_neg
    v01 = 1.0 - (both[:, n_pos:] - rankdata(neg, axis=1)) / n_pos
    return v10, v01


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) of the score rows (:func:`auroc`) and their DeLong covariance matrix (k, k);
    needs >= 2 cases of each class."""
    scores = np.atleast_2d(np.asarray(scores, float))
    v10, v01 = delong_components(y, scores)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return np.array([auroc(y, row) for row in scores]), s10 / v10.shape[1] + s01 / v01.shape[1]


def weighted_auroc(case_scores: np.ndarray, control_scores: np.ndarray,
                   case_weights: np.ndarray) -> float:
    """P(case score > control score) with weighted cases, ties counting one half: :func:`auroc`
    with ``case_weights`` and weight 1 for each control (a common weight cancels); NaN without
    cases or controls.

    The prognosis time-dependent AUC is this with inverse-probability-of-censoring weights.
    """
    cases, controls = np.asarray(case_scores, np.float64), np.asarray(control_scores, np.float64)
    if not len(cases) or not len(controls):
        return float("nan")
    y = np.r_[np.ones(len(cases), bool), np.zeros(len(controls), bool)]
    weight = np.r_[np.asarray(case_weights, np.float64), np.ones(len(controls))]
    return auroc(y, np.r_[cases, controls], sample_weight=weight)


def auroc_summary(y: np.ndarray, p: np.ndarray, *, n_boot: int, rng: np.random.Generator,
                  level: float = LEVEL) -> dict:
    """AUROC with its DeLong standard error and CI (normal, clipped to [0, 1], as pROC)
    and a stratified percentile-bootstrap CI. Undefined parts are None with a ``reason``."""
    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return {"value": None, "reason": f"only one class (positives {n_pos}, negatives {n_neg}): "
                                         "AUROC undefined"}
    out: dict = {"value": auroc(y, p)}
    if min(n_pos, n_neg) < 2:
        out["delong"] = {"se": None, "ci": None, "reason": "DeLong needs at least 2 cases of each class"}
    else:
        aucs, cov = delong_covariance(y, p)
        se = float(np.sqrt(max(cov[0, 0], 0.0)))
        z = z_value(level)
        out["delong"] = {"se": se, "ci": [max(0.0, out["value"] - z * se), min(1.0, out["value"] + z * se)]}
    reps = bootstrap_auroc(y, p, n_boot=n_boot, rng=rng)[:, 0] if n_boot else np.empty(0)
    out["bootstrap"] = {"ci": percentile_interval(reps, level), "replicates": int(reps.size),
                        "se": float(reps.std(ddof=1)) if reps.size > 1 else None}
    return out


def bootstrap_auroc(y: np.ndarray, scores: np.ndarray, *, n_boot: int,
                    rng: np.random.Generator) -> np.ndarray:
    """AUROC of each score row (k, n) on n_boot stratified resamples -> (n_boot, k).

    All rows share the resamples (paired bootstrap). Needs both classes.
    """
    y = np.asarray(y, bool)
    scores = np.atleast_2d(np.asarray(scores, float))
    pos, neg = scores[:, y], scores[:, ~y]
    n_pos, n_neg = pos.shape[1], neg.shape[1]
    # For each positive, where the negatives below / up to it end in the sorted negatives.
    orders = [np.argsort(row, kind="mergesort") for row in neg]
    lo = [np.searchsorted(row[o], pr, "left") for row, o, pr in zip(neg, orders, pos)]
    hi = [np.searchsorted(row[o], pr, "right") for row, o, pr in zip(neg, orders, pos)]
    out = []
    for w_pos, w_neg in stratified_weights(n_pos, n_neg, n_boot, rng):
        chunk = np.empty((w_pos.shape[0], scores.shape[0]))
        for m, order in enumerate(orders):
            below = np.zeros((w_neg.shape[0], n_neg + 1))
            np.cumsum(w_neg[:, order], axis=1, out=below[:, 1:])
            less, upto = below[:, lo[m]], below[:, hi[m]]
            chunk[:, m] = (w_pos * (less + upto)).sum(axis=1) / (2.0 * n_pos * n_neg)
        out.append(chunk)
    return np.concatenate(out) if out else np.empty((0, scores.shape[0]))

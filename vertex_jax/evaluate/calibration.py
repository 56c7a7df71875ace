"""Calibration: Brier score, logistic recalibration, expected calibration error, reliability bins.

Definitions (x = logit(p), p clipped to [1e-6, 1 - 1e-6]):

- calibration slope ``b`` and recalibration intercept ``a`` from the logistic model
  ``logit P(y=1) = a + b x`` (ideal: b = 1);
- calibration intercept (calibration-in-the-large) ``c`` from ``logit P(y=1) = c + x``,
  i.e. the slope fixed at 1 (x as offset; ideal: c = 0; c > 0 means risks are underestimated).

Both are unpenalised maximum-likelihood fits (Newton-Raphson). They do not exist when the
data has one class (intercepts) or when the predictions separate the classes (slope).

Expected calibration error: sum over the equal-width bins of the reliability diagram of
(n_b / N) * |mean predicted_b - observed_b|, with a percentile bootstrap interval (cases
resampled with replacement; the bins stay fixed).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from vertex_jax.evaluate.intervals import LEVEL, percentile_interval, resample_counts, wilson, z_value

EPS = 1e-6


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def _fit_logistic(X: np.ndarray, y: np.ndarray, offset: np.ndarray, max_iter: int = 100,
                  tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray] | None:
    """Unpenalised logistic regression by Newton-Raphson: (coefficients, their covariance,
    the inverse Fisher information); None if it does not converge."""
    beta = np.zeros(X.shape[1])
    for _ in range(max_iter):
        mu = expit(X @ beta + offset)
        hess = X.T @ (X * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hess, X.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta += step
        if np.max(np.abs(step)) < tol * (1 + np.max(np.abs(beta))):
            mu = expit(X @ beta + offset)
            return beta, np.linalg.inv(X.T @ (X * (mu * (1 - mu))[:, None]))
    return None


def _wald(value: float, variance: float, level: float) -> list[float]:
    half = z_value(level) * float(np.sqrt(variance))
    return [value - half, value + half]


def recalibration(y: np.ndarray, p: np.ndarray, level: float = LEVEL) -> dict:
    """Calibration slope, recalibration intercept and calibration intercept (see module doc),
    the slope and the calibration intercept with Wald confidence intervals."""
    y = np.asarray(y, float)
    x = logit(np.clip(np.asarray(p, float), EPS, 1 - EPS))
    if y.min() == y.max():
        return {"slope": None, "recalibration_intercept": None, "intercept": None,
                "reason": "only one class: undefined"}
    ones = np.ones((y.size, 1))
    citl = _fit_logistic(ones, y, x)
    out: dict = {"intercept": None if citl is None else float(citl[0][0])}
    if citl is not None:
        out["intercept_ci"] = _wald(out["intercept"], citl[1][0, 0], level)
    pos, neg = x[y == 1], x[y == 0]
    if pos.min() >= neg.max() or neg.min() >= pos.max():
        out.update(slope=None, recalibration_intercept=None,
                   reason="predictions separate the classes: slope is infinite")
        return out
    fit = _fit_logistic(np.column_stack([ones, x]), y, np.zeros_like(x))
    if fit is None:
        out.update(slope=None, recalibration_intercept=None, reason="logistic fit did not converge")
    else:
        beta, cov = fit
        out.update(slope=float(beta[1]), slope_ci=_wald(float(beta[1]), cov[1, 1], level),
                   recalibration_intercept=float(beta[0]))
    return out


def reliability_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10, level: float = LEVEL) -> list[dict]:
    """Equal-width bins of predicted probability (bin i holds (lo, hi], the first also 0),
    as ``sklearn.calibration.calibration_curve(strategy="uniform")``; empty bins are left out."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = _bin_ids(p, n_bins)
    bins = []
    for i in range(n_bins):
        m = ids == i
        n = int(m.sum())
        if n:
            k = int(y[m].sum())
            bins.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": n,
                         "mean_predicted": float(p[m].mean()), "observed": k / n,
                         "observed_ci": wilson(k, n, level)})
    return bins


def _bin_ids(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], p)


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10, *, n_boot: int = 0,
                               rng: np.random.Generator | None = None, level: float = LEVEL) -> dict:
    """ECE over ``n_bins`` equal-width bins, with a bootstrap interval when ``n_boot`` > 0."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    onehot = np.eye(n_bins)[_bin_ids(p, n_bins)]  # [n, bins]
    gap = onehot * (p - y)[:, None]  # a case's contribution to its bin's sum of p - y
    value = float(np.abs(gap.sum(axis=0)).sum() / y.size)
    out: dict = {"value": value, "bins": n_bins}
    if n_boot and y.size:
        rng = rng or np.random.default_rng(0)
        reps = [np.abs(w @ gap).sum(axis=1) / y.size
                for w in (resample_counts(y.size, min(256, n_boot - s), rng) for s in range(0, n_boot, 256))]
        out["ci"] = percentile_interval(np.concatenate(reps), level)
    return out


def calibration_summary(y: np.ndarray, p: np.ndarray, n_bins: int = 10, level: float = LEVEL, *,
                        n_boot: int = 0, rng: np.random.Generator | None = None) -> dict:
    """Brier score, mean predicted vs observed risk, recalibration fit, ECE and reliability bins."""
    return {"brier": brier(y, p), "mean_predicted": float(np.mean(p)), "observed": float(np.mean(y)),
            **recalibration(y, p, level), "ece": expected_calibration_error(y, p, n_bins, n_boot=n_boot, rng=rng,
                                                                      level=level),
            "bins": reliability_bins(y, p, n_bins, level)}

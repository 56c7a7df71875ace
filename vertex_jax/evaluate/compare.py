"""Two models on the same cases: paired DeLong test and paired bootstrap of the AUROC difference.

The difference is model A minus model B. DeLong: z = diff / se(diff) with
se² = var(A) + var(B) - 2 cov(A, B) from the structural components (as pROC's ``roc.test``).
Bootstrap: the same stratified resamples for both models; percentile CI of the difference and
p = 2 (1 - Φ(|diff| / sd(replicates))) (pROC's bootstrap test).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from vertex_jax.evaluate.intervals import LEVEL, percentile_interval, z_value
from vertex_jax.evaluate.roc import auroc, bootstrap_auroc, delong_covariance


def paired_delong(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, level: float = LEVEL) -> dict:
    """AUROC difference A - B, its DeLong standard error, CI, z and two-sided p-value."""
    aucs, cov = delong_covariance(y, np.stack([p_a, p_b]))
    diff = float(aucs[0] - aucs[1])
    se = float(np.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
    if se == 0.0:
        if diff != 0.0:
            return {"diff": diff, "se": 0.0, "ci": None, "z": None, "p": None,
                    "reason": "zero variance of the difference"}
        return {"diff": 0.0, "se": 0.0, "ci": [0.0, 0.0], "z": 0.0, "p": 1.0}
    z = diff / se
    half = z_value(level) * se
    return {"diff": diff, "se": se, "ci": [diff - half, diff + half], "z": z, "p": float(2 * norm.sf(abs(z)))}


def paired_bootstrap(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, *, n_boot: int,
                     rng: np.random.Generator, level: float = LEVEL) -> dict:
    """Bootstrap CI and p-value of the AUROC difference A - B on shared stratified resamples."""
    reps = bootstrap_auroc(y, np.stack([p_a, p_b]), n_boot=n_boot, rng=rng)
    diffs = reps[:, 0] - reps[:, 1]
    out: dict = {"ci": percentile_interval(diffs, level), "se": None, "p": None, "replicates": int(diffs.size)}
    sd = float(diffs.std(ddof=1)) if diffs.size > 1 else 0.0
    if sd == 0.0:
        out["reason"] = "no spread across bootstrap replicates"
        return out
    diff = auroc(y, p_a) - auroc(y, p_b)
    return {**out, "se": sd, "p": float(2 * norm.sf(abs(diff) / sd))}


def compare_group(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, *, n_boot: int,
                  rng: np.random.Generator, level: float = LEVEL) -> dict:
    """Paired DeLong and paired bootstrap for one set of cases; None-valued with a reason if undefined."""
    y = np.asarray(y, bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    out: dict = {"n": n_pos + n_neg, "positives": n_pos, "negatives": n_neg}
    if min(n_pos, n_neg) < 2:
        out["reason"] = f"needs at least 2 cases of each class (positives {n_pos}, negatives {n_neg})"
        return out
    out["delong"] = paired_delong(y, p_a, p_b, level)
    out["bootstrap"] = paired_bootstrap(y, p_a, p_b, n_boot=n_boot, rng=rng, level=level)
    return out

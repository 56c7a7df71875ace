"""Nonparametric bootstrap over patients with percentile intervals.

Every statistic of one resample is computed on the same patients, so differences
(clinical + DL minus clinical) get paired intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from vertex_jax.evaluate.intervals import LEVEL, percentile_interval


def bootstrap(statistic: Callable[[np.ndarray], Mapping[str, float]], n: int, reps: int,
              seed: int) -> dict[str, np.ndarray]:
    """``statistic(indices)`` on ``reps`` resamples of ``range(n)`` with replacement."""
    rng = np.random.default_rng(seed)
    rows = [statistic(rng.integers(0, n, n)) for _ in range(reps)]
    if not rows:
        return {}
    return {key: np.array([row[key] for row in rows], np.float64) for key in rows[0]}


def interval(estimate: float, samples: np.ndarray | None, level: float = LEVEL) -> dict[str, float]:
    """Point estimate, percentile CI (:func:`vertex_jax.evaluate.intervals.percentile_interval`),
    bootstrap SE and the number of resamples where it was undefined; no CI or SE from fewer
    than 2 defined resamples."""
    out = {"estimate": float(estimate), "ci_low": np.nan, "ci_high": np.nan, "se": np.nan, "undefined": 0}
    if samples is None or not len(samples):
        return out
    ok = samples[np.isfinite(samples)]
    out["undefined"] = int(len(samples) - len(ok))
    if len(ok) >= 2:
        out["ci_low"], out["ci_high"] = percentile_interval(ok, level)
        out["se"] = float(np.std(ok, ddof=1))
    return out

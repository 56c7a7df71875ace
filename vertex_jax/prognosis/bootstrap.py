"""Nonparametric bootstrap over patients with percentile intervals.

Every statistic of one resample is computed on the same patients, so differences
(clinical + DL minus clinical) get paired intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


def bootstrap(statistic: Callable[[np.ndarray], Mapping[str, float]], n: int, reps: int,
              seed: int) -> dict[str, np.ndarray]:
    """``statistic(indices)`` on ``reps`` resamples of ``range(n)`` with replacement."""
    rng = np.random.default_rng(seed)
    rows = [statistic(rng.integers(0, n, n)) for _ in range(reps)]
    if not rows:
        return {}
    return {key: np.array([row[key] for row in rows], np.float64) for key in rows[0]}


def interval(estimate: float, samples: np.ndarray | None, level: float = 0.95) -> dict[str, float]:
    """Point estimate, percentile CI, bootstrap SE and the number of resamples where it was undefined."""
    out = {"estimate": float(estimate), "ci_low": np.nan, "ci_high": np.nan, "se": np.nan, "undefined": 0}
    if samples is None or not len(samples):
        return out
    ok = samples[np.isfinite(samples)]
    out["undefined"] = int(len(samples) - len(ok))
    if len(ok) >= 2:
        tail = 50.0 * (1.0 - level)
        out["ci_low"], out["ci_high"] = map(float, np.percentile(ok, [tail, 100.0 - tail]))
        out["se"] = float(np.std(ok, ddof=1))
    return out

"""Confidence intervals: Wilson score intervals and the stratified bootstrap.

The bootstrap resamples positives and negatives separately (case counts per class fixed,
as in pROC's ``stratified=TRUE``) and is expressed as *weights*: row b of ``w_pos`` says how
many times each positive case appears in resample b. Statistics are then
weighted sums, so 2000 resamples of 10,000 cases cost a few matrix products.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np
from scipy import stats

LEVEL = 0.95


def z_value(level: float = LEVEL) -> float:
    """Two-sided normal quantile: 1.96 for 95%."""
    return float(stats.norm.ppf(0.5 + level / 2))


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator keyed by the seed and names (task, subgroup), independent of call order."""
    return np.random.default_rng([seed, *(zlib.crc32(n.encode()) for n in names)])


def wilson(k: int, n: int, level: float = LEVEL) -> list[float] | None:
    """Wilson score interval for k successes out of n (no continuity correction): scipy's
    ``binomtest(k, n).proportion_ci(level, method="wilson")``; None if n == 0."""
    if n == 0:
        return None
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return [float(ci.low), float(ci.high)]


def stratified_weights(n_pos: int, n_neg: int, n_boot: int, rng: np.random.Generator,
                       chunk: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (w_pos (b, n_pos), w_neg (b, n_neg)) resampling counts, b <= chunk, n_boot rows in all."""
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        yield resample_counts(n_pos, b, rng), resample_counts(n_neg, b, rng)


def resample_counts(n: int, b: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of n cases is drawn in b resamples of n draws with replacement -> (b, n)."""
    draws = rng.integers(0, n, size=(b, n)) + np.arange(b)[:, None] * n if n else np.zeros((b, 0), np.int64)
    return np.bincount(draws.ravel(), minlength=b * n).reshape(b, n)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """Percentile interval of the finite replicates; None if there are none."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]

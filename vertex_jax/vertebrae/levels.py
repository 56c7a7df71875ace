"""Level names from the spine's order: a small dynamic programme over the found vertebrae.

A classifier alone names each vertebra in isolation and can name two T8s, or a T9 above a
T8. The vertebrae found in one image are sorted along the spine (top to bottom, the image's
y) and given levels that increase one by one in that order, a missed vertebra leaving a gap
(a level skipped), so that the summed level log-probabilities are largest. The first level
is free: a cropped spine that starts at T6 is named T6, T7, ... when its level evidence
says so.

Score of an assignment (levels ``l_1 < l_2 < ...`` to the kept detections in spine order)::

    sum_i log p_i(l_i)
      - sum over consecutive kept pairs of  gap_cost * g + spacing_weight * (g - e)**2
      - drop_cost * (detections left unnamed)

with ``g = l_{i+1} - l_i - 1`` the levels skipped between them and ``e`` the gap their
distance suggests (0 when they sit one pitch apart, 1 at two pitches, ...; the pitch is the
median, over neighbouring detections, of their distance over their mean box height, so it
follows the vertebrae growing towards the sacrum). Without centres the spacing term is 0.
"""

from __future__ import annotations

import numpy as np

LEVELS: tuple[str, ...] = tuple([f"T{i}" for i in range(4, 13)] + [f"L{i}" for i in range(1, 5)])


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax of ``logits`` along ``axis``."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def expected_gaps(centres: np.ndarray, heights: np.ndarray | None = None) -> np.ndarray:
    """(n, n) levels the distance between detections j < i suggests are missing between
    them, for ``centres`` (n, 2) in spine order and their box ``heights`` (n,) (the local
    size; all 1 if None). Entry [j, i] = d_ji / (pitch * mean height) - 1."""
    c = np.asarray(centres, np.float64)
    n = len(c)
    size = np.ones(n) if heights is None else np.asarray(heights, np.float64)
    d = np.linalg.norm(c[:, None] - c[None], axis=-1)
    local = (size[:, None] + size[None]) / 2
    if n < 2:
        return np.zeros((n, n))
    pitch = float(np.median(np.diag(d, 1) / np.diag(local, 1)))
    return d / (pitch * local) - 1.0


def name_levels(log_probs: np.ndarray, centres: np.ndarray | None = None,
                heights: np.ndarray | None = None, *, gap_cost: float = 1.0,
                spacing_weight: float = 2.0, drop_cost: float = 10.0) -> np.ndarray:
    """Level indices (into the columns of ``log_probs``, -1 = left unnamed) of n detections.

    ``log_probs`` (n, L): each detection's level log-probabilities. With ``centres`` (n, 2)
    (x, y) the detections are put in spine order by y (ties by x) and the result comes back
    in the input's order; without, the rows are taken to be in spine order already.
    ``heights`` (n,): box heights for the spacing term. Costs in nats (see the module).
    """
    lp = np.asarray(log_probs, np.float64)
    n, n_levels = lp.shape
    if n == 0:
        return np.zeros(0, np.int64)
    order = np.arange(n) if centres is None else np.lexsort(
        (np.asarray(centres)[:, 0], np.asarray(centres)[:, 1]))
    lp = lp[order]
    if centres is None:
        expect = None
    else:
        expect = expected_gaps(np.asarray(centres)[order],
                               None if heights is None else np.asarray(heights)[order])
    gap = np.arange(n_levels)[None, :] - np.arange(n_levels)[:, None] - 1  # [l_prev, l]
    allowed = gap >= 0
    best = np.full((n, n_levels), -np.inf)
    prev = np.full((n, n_levels, 2), -1, np.int64)  # (detection, level) before, -1: none
    for i in range(n):
        best[i] = lp[i] - drop_cost * i
        for j in range(i):
            cost = gap_cost * gap
            if expect is not None:
                cost = cost + spacing_weight * (gap - expect[j, i]) ** 2
            cand = np.where(allowed, best[j][:, None] - cost, -np.inf) - drop_cost * (i - j - 1)
            arg = cand.argmax(0)
            total = cand[arg, np.arange(n_levels)] + lp[i]
            better = total > best[i]
            best[i] = np.where(better, total, best[i])
            prev[i][better] = np.stack([np.full(better.sum(), j), arg[better]], 1)
    final = best - drop_cost * (n - 1 - np.arange(n))[:, None]
    out = np.full(n, -1, np.int64)
    if final.max() < -drop_cost * n:  # dropping everything scores better
        return out
    i, level = np.unravel_index(int(np.argmax(final)), final.shape)
    while i >= 0:
        out[order[i]] = level
        i, level = prev[i, level]
    return out

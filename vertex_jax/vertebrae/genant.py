"""Genant grade by measurement: three body heights from six endplate points, the height
loss, and the semi-quantitative grade it implies.

Heights (six-point morphometry): anterior ``Ha``, middle ``Hm`` and posterior ``Hp``, each the
distance between the superior and the inferior endplate point at that place
(:data:`~vertex_jax.vertebrae.annotations.POINTS`). Height loss::

    loss = 1 - min(Ha, Hm, Hp) / max(Ha, Hm, Hp)

the reduction of the smallest height relative to the body's own expected height, taken as
the largest of its three: ``Ha/Hp`` of a wedge, ``Hm/Hp`` (or ``Hm/Ha``) of a biconcave body,
``Hp/Ha`` of a posterior collapse. Genant's semi-quantitative grades (Genant et al., J Bone
Miner Res 1993;8:1137-48): 0 normal (< 20%), 1 mild (20-25%), 2 moderate (25-40%), 3 severe
(> 40%). Each boundary belongs to the grade above it: a loss of exactly 20% is grade 1, 25%
grade 2 and 40% grade 3 (compared with a 1e-9 tolerance, so 1 - 8/10 is 20%).

A body that collapses evenly (a crush with all three heights lower) keeps its own ratios; its
loss shows only against the neighbours' heights, which ``reference`` takes (the expected
height from adjacent intact vertebrae, :func:`neighbour_reference`).
"""

from __future__ import annotations

import numpy as np

THRESHOLDS: tuple[float, float, float] = (0.20, 0.25, 0.40)  # lowest loss of grades 1, 2, 3
_EPS = 1e-9


def heights(points: np.ndarray) -> np.ndarray:
    """(..., 6, 2) endplate points (POINTS order) -> (..., 3) heights (Ha, Hm, Hp)."""
    p = np.asarray(points, np.float64)
    if p.shape[-2:] != (6, 2):
        raise ValueError(f"expected (..., 6, 2) endplate points, got shape {p.shape}")
    return np.linalg.norm(p[..., 3:, :] - p[..., :3, :], axis=-1)


def height_loss(h: np.ndarray, reference: np.ndarray | float | None = None) -> np.ndarray:
    """(..., 3) heights -> (...) loss ``1 - min / max`` (the expected height being the largest
    of the three, or ``reference`` where that is larger)."""
    h = np.asarray(h, np.float64)
    expected = h.max(-1)
    if reference is not None:
        expected = np.fmax(expected, np.asarray(reference, np.float64))
    if np.any(expected <= 0):
        raise ValueError("a vertebra with no height: its endplate points coincide")
    return 1.0 - h.min(-1) / expected


def grade_from_loss(loss: np.ndarray | float) -> np.ndarray:
    """Genant grade 0-3 of a height loss (fraction): boundaries 0.20, 0.25, 0.40, each in
    the grade above it."""
    loss = np.asarray(loss, np.float64)
    return sum((loss >= t - _EPS).astype(np.int64) for t in THRESHOLDS)


def measured_grade(points: np.ndarray) -> np.ndarray:
    """(..., 6, 2) endplate points -> (...) Genant grade by measurement."""
    return grade_from_loss(height_loss(heights(points)))


def neighbour_reference(h: np.ndarray, present: np.ndarray | None = None, rounds: int = 3
                        ) -> np.ndarray:
    """(n, 3) heights of consecutive levels -> (n,) expected height of each from its adjacent
    levels: the mean of the largest height of the nearest level above and below that is not
    itself fractured (NaN where there is none). ``present`` (n,) marks measured levels.

    A level counts as fractured when its loss is >= 20% against itself, then also against
    the references of the round before (an even collapse shows only there); ``rounds``
    repeats that until nothing changes."""
    h = np.asarray(h, np.float64)
    n = len(h)
    measured = np.ones(n, bool) if present is None else np.asarray(present, bool)
    ok = measured.copy()
    ok[measured] = height_loss(h[measured]) < THRESHOLDS[0] - _EPS
    top = h.max(-1)
    out = np.full(n, np.nan)
    for _ in range(rounds):
        for i in range(n):
            near = [top[j] for j in (_nearest(ok, i, -1), _nearest(ok, i, 1)) if j is not None]
            out[i] = float(np.mean(near)) if near else np.nan
        again = measured.copy()
        again[measured] = height_loss(h[measured], np.nan_to_num(out[measured])) < THRESHOLDS[0] - _EPS
        again &= ok
        if (again == ok).all():
            break
        ok = again
    return out


def _nearest(ok: np.ndarray, i: int, step: int) -> int | None:
    j = i + step
    while 0 <= j < len(ok):
        if ok[j]:
            return j
        j += step
    return None

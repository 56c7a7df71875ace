"""Does a map point at the fractured vertebra? Per-image findings and localisation metrics.

Boxes are ``(x0, y0, x1, y1)`` in original-image pixels, inclusive of ``x0, y0`` and exclusive
of ``x1, y1`` (the synthetic cohort's ``annotations.json``); maps are indexed ``[y, x]``.

Per image with at least one fractured vertebra (:func:`score_image`):

- ``strict``: the map's peak lies inside a fractured vertebra's box (pointing game);
- ``tolerant``: the peak lies within ``tolerance`` pixels of such a box (Zhang et al. 2016;
  TorchRay counts a hit within 15 px; here 15 px of the model's canvas mapped to original px);
- ``energy``: the share of the map's mass inside the union of fractured boxes;
- ``level``: the vertebra whose box centre is nearest the peak (the level a report would
  name) is fractured;

each beside its chance baseline (a uniformly random peak, a uniform map, a random level):
the fractured boxes' area over the image's and over the spine's (the union of all vertebra
boxes), and the fractured share of the levels. :func:`summarise` gives the proportions with
Wilson 95% intervals and the mean energy with a bootstrap interval.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
from scipy import stats

from vertex_jax.evaluate.intervals import percentile_interval, rng_for, wilson
from vertex_jax.errors import InputDataError

TOLERANCE_CANVAS_PX = 15.0


@dataclasses.dataclass(frozen=True)
class Vertebra:
    level: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 (original pixels)
    fractured: bool

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0


def load_boxes(path: str | Path) -> dict[str, list[Vertebra]]:
    """Vertebra boxes per image id, from the synthetic cohort's ``annotations.json``
    (``{image_id: [{"level", "box": [x0, y0, x1, y1], "fractured"}, ...]}``) or a CSV with
    columns ``image_id, level, x0, y0, x1, y1, fractured`` (one row per vertebra; fractured
    0/1)."""
    path = Path(path)
    out: dict[str, list[Vertebra]] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            need = {"image_id", "level", "x0", "y0", "x1", "y1", "fractured"}
            if missing := need - set(reader.fieldnames or ()):
                raise InputDataError(f"{path}: box CSV lacks column(s) {sorted(missing)}")
            for line, row in enumerate(reader, start=2):
                try:
                    box = tuple(float(row[k]) for k in ("x0", "y0", "x1", "y1"))
                    fractured = bool(int(row["fractured"]))
                except ValueError as e:
                    raise InputDataError(f"{path}:{line}: {e}") from None
                out.setdefault(row["image_id"], []).append(Vertebra(row["level"], box, fractured))
        return out
    for image_id, records in json.loads(path.read_text()).items():
        out[image_id] = [Vertebra(str(r.get("level", "")), tuple(float(v) for v in r["box"]),
                                  bool(r.get("fractured"))) for r in records]
    return out


def peak(heatmap: np.ndarray) -> tuple[float, float]:
    """(x, y) of the map's maximum (the centre of mass of tied maxima)."""
    ys, xs = np.nonzero(heatmap >= heatmap.max())
    return float(xs.mean()), float(ys.mean())


def region(heatmap: np.ndarray, at: tuple[float, float], fraction: float = 0.5
           ) -> tuple[int, int, int, int]:
    """Box (x0, y0, x1, y1) of the connected area at or above ``fraction`` of the peak value
    that contains the point ``at`` (the peak); exclusive upper bounds."""
    x, y = int(round(at[0])), int(round(at[1]))
    top = float(heatmap[y, x])
    mask = (heatmap >= fraction * top).astype(np.uint8) if top > 0 else np.zeros_like(heatmap, np.uint8)
    mask[y, x] = 1
    _, labels, boxes, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    x0, y0, w, h, _ = boxes[labels[y, x]]
    return int(x0), int(y0), int(x0 + w), int(y0 + h)


def _distance(point: tuple[float, float], box: Sequence[float]) -> float:
    x, y = point
    x0, y0, x1, y1 = box
    dx, dy = max(x0 - x, 0.0, x - x1), max(y0 - y, 0.0, y - y1)
    return float(np.hypot(dx, dy))


def _inside(point: tuple[float, float], box: Sequence[float]) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= point[0] < x1 and y0 <= point[1] < y1


def _union_mask(shape: tuple[int, int], boxes: Sequence[Sequence[float]]) -> np.ndarray:
    """Pixels [y, x] whose centre (x + 0.5, y + 0.5) lies in any box."""
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        cols = slice(max(0, int(np.ceil(x0 - 0.5))), max(0, int(np.ceil(x1 - 0.5))))
        rows = slice(max(0, int(np.ceil(y0 - 0.5))), max(0, int(np.ceil(y1 - 0.5))))
        mask[rows, cols] = True
    return mask


def nearest_level(point: tuple[float, float], vertebrae: Sequence[Vertebra]) -> Vertebra:
    return min(vertebrae, key=lambda v: np.hypot(point[0] - v.centre[0], point[1] - v.centre[1]))


def score_image(heatmap: np.ndarray, vertebrae: Sequence[Vertebra], tolerance: float
                ) -> dict[str, Any]:
    """Localisation of one non-negative map [H, W] against one image's vertebrae (at least
    one fractured); ``tolerance`` in original pixels."""
    fractured = [v.box for v in vertebrae if v.fractured]
    if not fractured:
        raise ValueError("score_image needs an image with a fractured vertebra")
    point = peak(heatmap)
    inside = _union_mask(heatmap.shape, fractured)
    spine = _union_mask(heatmap.shape, [v.box for v in vertebrae])
    total = float(heatmap.sum())
    named = nearest_level(point, vertebrae)
    return {
        "peak": point,
        "strict": any(_inside(point, b) for b in fractured),
        "tolerant": min(_distance(point, b) for b in fractured) <= tolerance,
        "energy": float(heatmap[inside].sum()) / total if total > 0 else 0.0,
        "level": named.level, "level_hit": named.fractured,
        "chance_image": float(inside.mean()),
        "chance_spine": float(inside.sum()) / max(1.0, float(spine.sum())),
        "chance_level": len(fractured) / len(vertebrae),
    }


def _mean_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> list[float] | None:
    """Percentile bootstrap 95% interval of the mean."""
    if len(values) == 0:
        return None
    rng = rng_for(seed, "energy")
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return percentile_interval(means)


def summarise(per_image: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Proportions (strict, tolerant, level) with Wilson 95% CIs, mean energy with a
    bootstrap 95% CI, and the mean chance baseline of each, over images scored."""
    n = len(per_image)
    out: dict[str, Any] = {"images": n}
    for key, field in (("strict", "strict"), ("tolerant", "tolerant"), ("level", "level_hit")):
        hits = int(sum(bool(r[field]) for r in per_image))
        out[key] = {"hits": hits, "rate": hits / n if n else None, "ci95": wilson(hits, n)}
    energy = np.array([r["energy"] for r in per_image], float)
    out["energy"] = {"mean": float(energy.mean()) if n else None, "ci95": _mean_ci(energy)}
    out["chance"] = {k: float(np.mean([r[f"chance_{k}"] for r in per_image])) if n else None
                     for k in ("image", "spine", "level")}
    return out


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation of two maps of one image (the model-randomisation check of
    Adebayo et al. 2018: a trained model's maps must not match a re-initialised model's)."""
    rho = stats.spearmanr(np.ravel(a), np.ravel(b)).statistic
    return float(rho) if np.isfinite(rho) else 0.0

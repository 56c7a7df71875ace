"""The head's dense outputs back to vertebrae in original-image pixels.

Peaks of the centre heat-map (a cell at least as high as every cell in a ``window`` ×
``window`` neighbourhood and at least ``threshold``; ties on a plateau keep the first in raster
order) give the vertebrae; the box, sub-cell offset and endplate points are read at the
peak's cell, put on the canvas (× stride), clipped to the part of the canvas that shows the
image and mapped back through the preprocessing's :class:`~vertex_jax.data.preprocess.Geometry`.
Levels are named from the spine's order (:func:`vertex_jax.vertebrae.levels.name_levels`),
grades are the grade head's most probable class, and ``fracture_probability`` is
``1 - p(grade 0)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import ndimage

from vertex_jax.data.preprocess import Geometry
from vertex_jax.vertebrae import genant
from vertex_jax.vertebrae.annotations import Vertebra
from vertex_jax.vertebrae.levels import LEVELS, log_softmax, name_levels
from vertex_jax.vertebrae.targets import HeadSpec, content_box, map_vertebra


@dataclasses.dataclass(frozen=True)
class Detection:
    """One found vertebra: box and points in original-image pixels (canvas pixels when decoded
    without a geometry), the peak's ``score``, its named ``level`` (None if left unnamed) and
    the per-class probabilities."""

    box: tuple[float, float, float, float]
    score: float
    level: str | None
    level_probabilities: tuple[float, ...]
    grade: int
    grade_probabilities: tuple[float, ...]
    points: tuple[tuple[float, float], ...] | None = None

    @property
    def fracture_probability(self) -> float:
        return 1.0 - self.grade_probabilities[0]

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2.0, (y0 + y1) / 2.0

    def measured_grade(self) -> int | None:
        """The Genant grade the predicted endplate points measure (None without points)."""
        return None if self.points is None else int(genant.measured_grade(np.array(self.points)))

    def as_vertebra(self) -> Vertebra:
        return Vertebra(self.level, self.box, self.grade, None, None, self.points)


def split(outputs: np.ndarray, spec: HeadSpec = HeadSpec()) -> dict[str, np.ndarray]:
    """(h, w, channels) raw head outputs -> named maps, the heat-map through a sigmoid."""
    outputs = np.asarray(outputs, np.float64)
    if outputs.shape != (*spec.grid, spec.channels):
        raise ValueError(f"expected outputs of shape {(*spec.grid, spec.channels)}, got {outputs.shape}")
    maps = {name: outputs[..., sl] for name, sl in spec.slices().items()}
    maps["heat"] = 1.0 / (1.0 + np.exp(-maps["heat"][..., 0]))
    return maps


def peaks(heat: np.ndarray, threshold: float, window: int = 3, max_peaks: int = 32
          ) -> list[tuple[int, int]]:
    """(row, column) of the local maxima of ``heat`` >= ``threshold``, highest first (ties in
    raster order); cells beyond the map's edge count as lower than any cell."""
    heat = np.asarray(heat, np.float64)
    top = ndimage.maximum_filter(heat, size=window, mode="constant", cval=-np.inf)
    rows, cols = np.nonzero((heat >= top) & (heat >= threshold))
    order = np.lexsort((cols, rows, -heat[rows, cols]))
    kept: list[tuple[int, int]] = []
    r = window // 2
    for i, j in zip(rows[order], cols[order]):
        if any(abs(i - a) <= r and abs(j - b) <= r for a, b in kept):  # a plateau's other cells
            continue
        kept.append((int(i), int(j)))
        if len(kept) == max_peaks:
            break
    return kept


def decode(maps: Mapping[str, np.ndarray], spec: HeadSpec = HeadSpec(),
           geometry: Geometry | None = None, *, threshold: float = 0.3, window: int = 3,
           max_detections: int = 32, name: bool = True, **level_costs: float) -> list[Detection]:
    """Vertebrae from one image's named maps (``heat`` probabilities (h, w); ``size``,
    ``offset`` (h, w, 2); ``points`` (h, w, 12) or absent; ``level`` (h, w, 13) and ``grade``
    (h, w, 4) logits), in spine order (top to bottom).

    ``geometry``: maps boxes and points back to original pixels (boxes clipped to the image);
    without it they stay in canvas pixels. ``name``: name levels from the order
    (``level_costs`` go to :func:`~vertex_jax.vertebrae.levels.name_levels`); otherwise each
    takes its own most probable level.
    """
    s = spec.stride
    cx0, cy0, cx1, cy1 = content_box(spec, geometry)
    found = peaks(maps["heat"], threshold, window, max_detections)
    boxes, centres, points = [], [], []
    for i, j in found:
        bx, by = (j + maps["offset"][i, j, 0]) * s, (i + maps["offset"][i, j, 1]) * s
        bw, bh = maps["size"][i, j, 0] * s, maps["size"][i, j, 1] * s
        boxes.append((max(cx0, bx - bw / 2), max(cy0, by - bh / 2),
                      min(cx1, bx + bw / 2), min(cy1, by + bh / 2)))
        centres.append((bx, by))
        pts = maps.get("points")
        points.append(None if pts is None else
                      tuple(map(tuple, np.asarray(pts[i, j]).reshape(6, 2) * s + (bx, by))))
    if not found:
        return []
    idx = tuple(np.array(found).T)
    level_lp = log_softmax(np.asarray(maps["level"])[idx])
    grade_p = np.exp(log_softmax(np.asarray(maps["grade"])[idx]))
    heights = np.array([b[3] - b[1] for b in boxes])
    levels = (name_levels(level_lp, np.array(centres), heights, **level_costs) if name
              else level_lp.argmax(1))
    out = []
    for k, (i, j) in enumerate(found):
        box = boxes[k]
        if box[2] <= box[0] or box[3] <= box[1]:
            continue  # a box wholly outside the image
        det = Detection(tuple(float(v) for v in box), float(maps["heat"][i, j]),
                        LEVELS[levels[k]] if levels[k] >= 0 else None,
                        tuple(float(p) for p in np.exp(level_lp[k])), int(grade_p[k].argmax()),
                        tuple(float(p) for p in grade_p[k]),
                        None if points[k] is None else tuple((float(x), float(y)) for x, y in points[k]))
        if geometry is not None:
            det = _to_original(det, geometry)
        out.append(det)
    return sorted(out, key=lambda d: (d.centre[1], d.centre[0]))


def _to_original(det: Detection, geometry: Geometry) -> Detection:
    v = map_vertebra(Vertebra(None, det.box, points=det.points), geometry.to_original)
    h, w = geometry.original
    x0, y0, x1, y1 = v.box
    box = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
    return dataclasses.replace(det, box=box, points=v.points)


def decode_outputs(outputs: np.ndarray, spec: HeadSpec = HeadSpec(),
                   geometries: Sequence[Geometry | None] | None = None, **options: Any
                   ) -> list[list[Detection]]:
    """Vertebrae of each image of a batch of raw head outputs, ``(B, h, w, channels)`` (what
    ``model.outputs(...)["vertebrae"]`` returns): :func:`split` then :func:`decode` per image,
    ``geometries[i]`` mapping image ``i`` back to original pixels (None: canvas pixels);
    ``options`` go to :func:`decode` (``threshold``, ``name``, level costs, ...)."""
    outputs = np.asarray(outputs)
    if outputs.ndim != 4:
        raise ValueError(f"expected a batch of outputs (B, h, w, channels), got shape {outputs.shape}")
    geometries = [None] * len(outputs) if geometries is None else list(geometries)
    if len(geometries) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs but {len(geometries)} geometries")
    return [decode(split(o, spec), spec, g, **options) for o, g in zip(outputs, geometries)]

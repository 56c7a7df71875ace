"""The vertebra head's dense outputs and the targets encoded from annotations.

Formulation (CenterNet, Zhou et al. 2019, "Objects as points"): on a stride-``S`` grid over
the preprocessed canvas (``S = 8``: 128×64 cells on 1024×512), each vertebra is the cell that
holds its box centre. The head emits, per cell, :data:`CHANNELS`::

    heat     1   vertebra-centre heat-map (logit; sigmoid -> probability)
    size     2   box width, height / S
    offset   2   centre / S - cell, in [0, 1) (the sub-cell position)
    points  12   the six endplate points (POINTS order), (x, y) - centre, / S
    level   13   level logits, T4..L4
    grade    4   Genant grade logits, 0..3

Targets (:func:`encode`, NumPy, one image; :func:`stack` makes a batch) are dense maps of
the grid, so every batch has the same shapes:

- ``heat`` (h, w): an elliptical Gaussian per vertebra, 1 at its centre cell, standard
  deviations ``alpha * box / 6`` (TTFNet's elliptical Gaussian; ``alpha = 0.54``), the maximum
  where two overlap; the loss is CenterNet's penalty-reduced focal loss;
- ``heat_weight`` (h, w): where the heat-map loss counts: everywhere for a complete
  annotation, only inside the annotated boxes for a partial one (lesion-box data: an
  unboxed place may still hold a vertebra), nowhere for an unannotated image; 0 inside the
  box of a vertebra the head is not asked about (a level outside T4..L4, or one the
  preprocessing's border crop cut to less than half);
- ``centre`` (h, w) bool: the cells where ``size``, ``offset`` (h, w, 2) are given;
- ``points`` (h, w, 12) with ``points_mask`` (h, w) bool;
- ``level``, ``grade``, ``fractured`` (h, w) int32 class indices, -1 where unknown or no
  vertebra (``fractured`` 0/1 supervises ``1 - p(grade 0)`` where only that is known);
- ``annotated``: 1.0 for an annotated image, 0.0 for one without (every loss masked).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from vertex_jax.data.preprocess import CANVAS, Geometry
from vertex_jax.vertebrae.annotations import POINTS, Vertebra
from vertex_jax.vertebrae.levels import LEVELS

CHANNELS: dict[str, int] = {"heat": 1, "size": 2, "offset": 2, "points": 2 * len(POINTS),
                            "level": len(LEVELS), "grade": 4}


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """The grid and the channel layout of the vertebra head."""

    stride: int = 8
    canvas: tuple[int, int] = CANVAS  # (height, width)
    alpha: float = 0.54  # Gaussian standard deviation = alpha * box side / 6
    min_visible: float = 0.5  # a vertebra cut by the crop is a target if this share is left

    def __post_init__(self) -> None:
        if self.stride < 1 or self.canvas[0] % self.stride or self.canvas[1] % self.stride:
            raise ValueError(f"the canvas {self.canvas} must be a multiple of the stride {self.stride}")

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of the output grid."""
        return self.canvas[0] // self.stride, self.canvas[1] // self.stride

    @property
    def channels(self) -> int:
        return sum(CHANNELS.values())

    def slices(self) -> dict[str, slice]:
        """Channel name -> its slice of the last axis of the head's output."""
        out, start = {}, 0
        for name, n in CHANNELS.items():
            out[name] = slice(start, start + n)
            start += n
        return out

    def to_dict(self) -> dict[str, Any]:
        """The spec and its channel layout (``{name: [start, stop]}``) as JSON-ready values:
        what an exported model's ``model.json`` records so its outputs can be decoded."""
        return {"stride": self.stride, "canvas": list(self.canvas), "grid": list(self.grid),
                "channels": self.channels,
                "layout": {name: [sl.start, sl.stop] for name, sl in self.slices().items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HeadSpec":
        """The spec of :meth:`to_dict`; ValueError when its layout is not this code's."""
        spec = cls(stride=int(d["stride"]), canvas=(int(d["canvas"][0]), int(d["canvas"][1])))
        layout = {name: list(v) for name, v in d.get("layout", {}).items()}
        if layout != spec.to_dict()["layout"]:
            raise ValueError(f"vertebra channel layout {layout} is not this version's "
                             f"{spec.to_dict()['layout']}")
        return spec


def map_vertebra(v: Vertebra, transform) -> Vertebra:
    """``v`` with its box corners and points passed through ``transform`` ((n, 2) -> (n, 2)),
    an axis-aligned map such as ``Geometry.to_canvas`` / ``to_original``."""
    corners = transform(np.array([v.box[:2], v.box[2:]], np.float64))
    (x0, y0), (x1, y1) = np.minimum(corners[0], corners[1]), np.maximum(corners[0], corners[1])
    points = None
    if v.points is not None:
        points = tuple((float(x), float(y)) for x, y in transform(np.array(v.points, np.float64)))
    return dataclasses.replace(v, box=(float(x0), float(y0), float(x1), float(y1)), points=points)


def warp_vertebra(v: Vertebra, canvas: tuple[int, int], angle_deg: float, scale: float,
                  flip: bool = False) -> Vertebra:
    """A canvas-pixel vertebra through the training augmentation's geometry: an optional
    left-right mirror, then rotation by ``angle_deg`` (counter-clockwise) and scaling about
    the canvas centre, as :func:`vertex_jax.train.augment.warp` moves the pixels (the map of
    ``cv2.getRotationMatrix2D(((W-1)/2, (H-1)/2), angle, scale)`` on pixel indices, here on
    continuous coordinates whose pixel i spans [i, i+1)). Points move exactly; the box becomes
    the bounding box of its turned corners (larger than the body's by up to a few pixels per
    10 degrees)."""
    h, w = canvas
    theta = math.radians(angle_deg)
    a, b = scale * math.cos(theta), scale * math.sin(theta)
    centre = np.array([w / 2.0, h / 2.0])
    forward = np.array([[a, b], [-b, a]])

    def move(xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64)
        if flip:
            xy = np.stack([w - xy[:, 0], xy[:, 1]], 1)
        return (xy - centre) @ forward.T + centre

    x0, y0, x1, y1 = v.box
    corners = move(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
    lo, hi = corners.min(0), corners.max(0)
    points = None if v.points is None else tuple((float(x), float(y)) for x, y in move(np.array(v.points)))
    return dataclasses.replace(v, box=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
                               points=points)


def content_box(spec: HeadSpec, geometry: Geometry | None) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the canvas that shows the image (all of it without a geometry)."""
    if geometry is None:
        return 0.0, 0.0, float(spec.canvas[1]), float(spec.canvas[0])
    top, left = geometry.offset
    return float(left), float(top), float(left + geometry.resized[1]), float(top + geometry.resized[0])


def empty(spec: HeadSpec = HeadSpec()) -> dict[str, np.ndarray]:
    """The targets of an unannotated image: every weight and mask 0."""
    h, w = spec.grid
    return {"heat": np.zeros((h, w), np.float32), "heat_weight": np.zeros((h, w), np.float32),
            "centre": np.zeros((h, w), bool), "size": np.zeros((h, w, 2), np.float32),
            "offset": np.zeros((h, w, 2), np.float32), "points": np.zeros((h, w, 12), np.float32),
            "points_mask": np.zeros((h, w), bool), "level": np.full((h, w), -1, np.int32),
            "grade": np.full((h, w), -1, np.int32), "fractured": np.full((h, w), -1, np.int32),
            "annotated": np.float32(0.0)}


def _cells(box: Sequence[float], spec: HeadSpec) -> tuple[slice, slice]:
    """Rows, columns of the cells a canvas box overlaps."""
    h, w = spec.grid
    s = spec.stride
    x0, y0, x1, y1 = box
    return (slice(max(0, math.floor(y0 / s)), min(h, math.ceil(y1 / s))),
            slice(max(0, math.floor(x0 / s)), min(w, math.ceil(x1 / s))))


@dataclasses.dataclass(frozen=True)
class Placed:
    """One vertebra as the targets see it, in canvas pixels: ``box`` is the part of it the
    canvas shows; ``target`` False for one the head is not asked about (a level outside
    T4..L4, or less than ``min_visible`` of it shown), whose cells leave the heat-map loss.
    ``points`` (6, 2) or None; ``level`` an index into LEVELS, ``grade`` and ``fractured``
    class indices, -1 where unknown."""

    box: tuple[float, float, float, float]
    target: bool
    points: np.ndarray | None
    level: int
    grade: int
    fractured: int


def place(vertebrae: Sequence[Vertebra], geometry: Geometry | None = None,
          spec: HeadSpec = HeadSpec()) -> list[Placed]:
    """Vertebrae (original pixels; canvas pixels when ``geometry`` is None) on the canvas,
    clipped to the part that shows the image, in the order given; those wholly outside it
    are left out."""
    cx0, cy0, cx1, cy1 = content_box(spec, geometry)
    out = []
    for v in vertebrae:
        c = v if geometry is None else map_vertebra(v, geometry.to_canvas)
        x0, y0, x1, y1 = c.box
        vis = (max(x0, cx0), max(y0, cy0), min(x1, cx1), min(y1, cy1))
        area = (x1 - x0) * (y1 - y0)
        shown = max(0.0, vis[2] - vis[0]) * max(0.0, vis[3] - vis[1])
        target = not (c.level is not None and c.level not in LEVELS or shown < spec.min_visible * area)
        if not target and shown <= 0:
            continue
        out.append(Placed(vis, target, None if c.points is None else np.array(c.points, np.float64),
                          LEVELS.index(c.level) if target and c.level is not None else -1,
                          -1 if c.grade is None else c.grade,
                          -1 if c.fractured is None else int(c.fractured)))
    return out


def encode(vertebrae: Sequence[Vertebra] | None, geometry: Geometry | None = None,
           spec: HeadSpec = HeadSpec(), *, complete: bool = True) -> dict[str, np.ndarray]:
    """Dense targets of one image (see the module).

    ``vertebrae``: in original-image pixels, mapped onto the canvas by ``geometry`` (in
    canvas pixels already when ``geometry`` is None); None: an unannotated image.
    ``complete``: every T4-L4 vertebra the image shows is annotated (False for lesion-box
    data). A second vertebra whose centre falls in a taken cell adds its heat but not its
    regression targets.
    """
    t = empty(spec)
    if vertebrae is None:
        return t
    t["annotated"] = np.float32(1.0)
    h, w = spec.grid
    s = spec.stride
    if complete:
        t["heat_weight"][:] = 1.0
    ignore = np.zeros((h, w), bool)
    ys, xs = np.arange(h, dtype=np.float64)[:, None], np.arange(w, dtype=np.float64)[None, :]
    for p in place(vertebrae, geometry, spec):
        vis = p.box
        if not p.target:
            ignore[_cells(vis, spec)] = True
            continue
        rows, cols = _cells(vis, spec)
        if not complete:
            t["heat_weight"][rows, cols] = 1.0
        bx, by = (vis[0] + vis[2]) / 2, (vis[1] + vis[3]) / 2
        bw, bh = vis[2] - vis[0], vis[3] - vis[1]
        i, j = min(h - 1, int(by // s)), min(w - 1, int(bx // s))
        sx, sy = max(spec.alpha * bw / 6 / s, 1e-3), max(spec.alpha * bh / 6 / s, 1e-3)
        gauss = np.exp(-((xs - j) ** 2 / (2 * sx * sx) + (ys - i) ** 2 / (2 * sy * sy)))
        np.maximum(t["heat"], gauss.astype(np.float32), out=t["heat"])
        if t["centre"][i, j]:
            continue
        t["centre"][i, j] = True
        t["size"][i, j] = (bw / s, bh / s)
        t["offset"][i, j] = (bx / s - j, by / s - i)
        if p.points is not None:
            t["points"][i, j] = ((p.points - (bx, by)) / s).ravel()
            t["points_mask"][i, j] = True
        t["level"][i, j] = p.level
        t["grade"][i, j] = p.grade
        t["fractured"][i, j] = p.fractured
    t["heat_weight"][ignore & ~t["centre"]] = 0.0
    return t


def stack(targets: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A batch: each target stacked on a new first axis."""
    return {k: np.stack([np.asarray(t[k]) for t in targets]) for k in targets[0]}

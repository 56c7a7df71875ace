"""Per-image vertebra slots: fixed-size arrays that carry an image's annotations in a batch.

The dense targets (:mod:`~vertex_jax.vertebrae.targets`) cannot be built on the host for
training: the augmentation warp (rotation, scale, mirror) is drawn and applied on the device
inside the step. So the batch carries each image's placed vertebrae (:func:`targets.place`:
canvas pixels, clipped to the part of the canvas that shows the image) in :data:`SLOTS`
slots, and the step moves them with the image's own warp and encodes the targets there
(:mod:`vertex_jax.train.vertebra_targets`). Per image::

    vertebra_kind        (K,)     int32    0 empty, 1 a target, 2 a box whose cells leave the heat loss
    vertebra_box         (K, 4)   float32  x0, y0, x1, y1 in canvas pixels
    vertebra_points      (K, 12)  float32  the six endplate points (x, y) in canvas pixels
    vertebra_has_points  (K,)     float32  1 where the points are known
    vertebra_level       (K,)     int32    index into LEVELS, -1 unknown
    vertebra_grade       (K,)     int32    Genant 0-3, -1 unknown
    vertebra_fractured   (K,)     int32    0/1, -1 unknown
    vertebra_annotated   ()       float32  1 for an annotated image, 0 for one without (all losses masked)
    vertebra_complete    ()       float32  1 when every T4-L4 vertebra it shows is annotated

Slots keep the annotation's order (the first vertebra in a cell takes its regression targets).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vertex_jax.data.preprocess import Geometry
from vertex_jax.errors import InputDataError
from vertex_jax.vertebrae.annotations import POINTS, Vertebra
from vertex_jax.vertebrae.targets import HeadSpec, place

SLOTS = 24  # T1-S1 is 18 vertebrae; a few more for doubly boxed ones
EMPTY, TARGET, IGNORE = 0, 1, 2
KEYS = ("vertebra_kind", "vertebra_box", "vertebra_points", "vertebra_has_points", "vertebra_level",
        "vertebra_grade", "vertebra_fractured", "vertebra_annotated", "vertebra_complete")


def empty_slots(count: int = 1, slots: int = SLOTS) -> dict[str, np.ndarray]:
    """The slots of ``count`` unannotated images (every array with a leading ``count`` axis)."""
    k = slots
    return {"vertebra_kind": np.zeros((count, k), np.int32),
            "vertebra_box": np.zeros((count, k, 4), np.float32),
            "vertebra_points": np.zeros((count, k, 2 * len(POINTS)), np.float32),
            "vertebra_has_points": np.zeros((count, k), np.float32),
            "vertebra_level": np.full((count, k), -1, np.int32),
            "vertebra_grade": np.full((count, k), -1, np.int32),
            "vertebra_fractured": np.full((count, k), -1, np.int32),
            "vertebra_annotated": np.zeros(count, np.float32),
            "vertebra_complete": np.zeros(count, np.float32)}


def fill(out: dict[str, np.ndarray], row: int, vertebrae: Sequence[Vertebra] | None,
         geometry: Geometry | None, spec: HeadSpec = HeadSpec(), *, complete: bool = True,
         name: str = "") -> None:
    """Write one image's slots into row ``row`` of ``out`` (from :func:`empty_slots`);
    ``vertebrae`` None leaves it unannotated. ``name`` goes into the error of an image with
    more vertebrae than slots."""
    if vertebrae is None:
        return
    placed = place(vertebrae, geometry, spec)
    slots = out["vertebra_kind"].shape[1]
    if len(placed) > slots:
        raise InputDataError(f"image {name!r} has {len(placed)} annotated vertebrae; at most "
                             f"{slots} are supported")
    out["vertebra_annotated"][row] = 1.0
    out["vertebra_complete"][row] = float(complete)
    for k, p in enumerate(placed):
        out["vertebra_kind"][row, k] = TARGET if p.target else IGNORE
        out["vertebra_box"][row, k] = p.box
        if p.points is not None:
            out["vertebra_points"][row, k] = p.points.ravel()
            out["vertebra_has_points"][row, k] = 1.0
        out["vertebra_level"][row, k] = p.level
        out["vertebra_grade"][row, k] = p.grade
        out["vertebra_fractured"][row, k] = p.fractured


def slot_arrays(vertebrae: Sequence[Vertebra] | None, geometry: Geometry | None = None,
                spec: HeadSpec = HeadSpec(), *, complete: bool = True) -> dict[str, np.ndarray]:
    """One image's slots (no leading axis)."""
    out = empty_slots(1)
    fill(out, 0, vertebrae, geometry, spec, complete=complete)
    return {k: v[0] for k, v in out.items()}

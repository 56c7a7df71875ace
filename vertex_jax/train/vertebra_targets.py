"""The vertebra head's dense targets, encoded on the device inside the training step.

The batch carries each image's vertebrae as fixed slots (:mod:`vertex_jax.vertebrae.slots`,
canvas pixels). :func:`warp_slots` moves them by the example's own augmentation (mirror,
rotation, scale: the map of :func:`vertex_jax.vertebrae.targets.warp_vertebra`, so boxes and
points land where the warp puts the pixels), and :func:`encode` builds the same dense maps as
:func:`vertex_jax.vertebrae.targets.encode` (the NumPy reference) from them: a vertebra is
clipped to the canvas and left out of the targets (its cells out of the heat loss) when less
than ``spec.min_visible`` of it is still shown.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vertex_jax.vertebrae.slots import IGNORE, KEYS, TARGET
from vertex_jax.vertebrae.targets import HeadSpec

Slots = dict[str, jax.Array]


def warp_points(xy: jax.Array, canvas: tuple[int, int], angle_deg: jax.Array, scale: jax.Array,
                flip: jax.Array) -> jax.Array:
    """(..., 2) canvas points (x, y) through the training warp: an optional mirror, then
    rotation by ``angle_deg`` (counter-clockwise) and scaling about the canvas centre."""
    h, w = canvas
    theta = jnp.deg2rad(angle_deg)
    a, b = scale * jnp.cos(theta), scale * jnp.sin(theta)
    x = jnp.where(flip, w - xy[..., 0], xy[..., 0]) - w / 2.0
    y = xy[..., 1] - h / 2.0
    return jnp.stack([a * x + b * y + w / 2.0, -b * x + a * y + h / 2.0], axis=-1)


def warp_slots(slots: Slots, canvas: tuple[int, int], angle_deg: jax.Array, scale: jax.Array,
               flip: jax.Array) -> Slots:
    """One image's slots moved by its warp: points exactly, each box the bounding box of its
    turned corners."""
    x0, y0, x1, y1 = (slots["vertebra_box"][:, i] for i in range(4))
    corners = jnp.stack([jnp.stack([x0, y0], -1), jnp.stack([x1, y0], -1),
                         jnp.stack([x1, y1], -1), jnp.stack([x0, y1], -1)], axis=1)  # (K, 4, 2)
    moved = warp_points(corners, canvas, angle_deg, scale, flip)
    box = jnp.concatenate([moved.min(axis=1), moved.max(axis=1)], axis=-1)
    points = warp_points(slots["vertebra_points"].reshape(-1, 6, 2), canvas, angle_deg, scale, flip)
    return {**slots, "vertebra_box": box, "vertebra_points": points.reshape(-1, 12)}


def _cell_masks(box: jax.Array, spec: HeadSpec) -> jax.Array:
    """(K, h, w): the cells each box overlaps."""
    h, w = spec.grid
    s = spec.stride
    rows, cols = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    r = (rows >= jnp.floor(box[:, 1:2] / s)) & (rows < jnp.ceil(box[:, 3:4] / s))
    c = (cols >= jnp.floor(box[:, 0:1] / s)) & (cols < jnp.ceil(box[:, 2:3] / s))
    return r[:, :, None] & c[:, None, :]


def encode(slots: Slots, spec: HeadSpec) -> dict[str, jax.Array]:
    """Dense targets of one image from its slots (canvas pixels), as
    :func:`vertex_jax.vertebrae.targets.encode` builds them (``centre``, ``points_mask`` as
    float32 0/1 here)."""
    h, w = spec.grid
    s = float(spec.stride)
    box = slots["vertebra_box"].astype(jnp.float32)
    kind = slots["vertebra_kind"]
    annotated = slots["vertebra_annotated"].astype(jnp.float32)
    vis = jnp.stack([jnp.maximum(box[:, 0], 0.0), jnp.maximum(box[:, 1], 0.0),
                     jnp.minimum(box[:, 2], float(spec.canvas[1])),
                     jnp.minimum(box[:, 3], float(spec.canvas[0]))], axis=-1)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    bw, bh = vis[:, 2] - vis[:, 0], vis[:, 3] - vis[:, 1]
    shown = jnp.maximum(bw, 0.0) * jnp.maximum(bh, 0.0)
    target = (kind == TARGET) & (shown >= spec.min_visible * area)
    ignore = ((kind == IGNORE) | (kind == TARGET)) & ~target & (shown > 0)
    bx, by = (vis[:, 0] + vis[:, 2]) / 2, (vis[:, 1] + vis[:, 3]) / 2
    i = jnp.clip(jnp.floor(by / s), 0, h - 1).astype(jnp.int32)
    j = jnp.clip(jnp.floor(bx / s), 0, w - 1).astype(jnp.int32)
    ys = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    sx = jnp.maximum(spec.alpha * bw / 6 / s, 1e-3)[:, None, None]
    sy = jnp.maximum(spec.alpha * bh / 6 / s, 1e-3)[:, None, None]
    gauss = jnp.exp(-((xs - j[:, None, None]) ** 2 / (2 * sx * sx)
                      + (ys - i[:, None, None]) ** 2 / (2 * sy * sy)))
    heat = jnp.max(jnp.where(target[:, None, None], gauss, 0.0), axis=0)
    # The first target in a cell takes its regression targets.
    cell = i * w + j
    k = jnp.arange(cell.shape[0])
    earlier = (k[None, :] < k[:, None]) & target[None, :] & (cell[None, :] == cell[:, None])
    winner = target & ~jnp.any(earlier, axis=1)
    onehot = (winner[:, None, None] & (jnp.arange(h)[None, :, None] == i[:, None, None])
              & (jnp.arange(w)[None, None, :] == j[:, None, None])).astype(jnp.float32)  # (K, h, w)
    centre = jnp.max(onehot, axis=0)

    def at_centre(values: jax.Array) -> jax.Array:  # (K, c) -> (h, w, c)
        return jnp.einsum("khw,kc->hwc", onehot, values.astype(jnp.float32))

    def classes(values: jax.Array) -> jax.Array:  # (K,) -> (h, w) int32, -1 off the centres
        return jnp.where(centre > 0, at_centre((values + 1)[:, None])[..., 0] - 1, -1).astype(jnp.int32)

    size = jnp.stack([bw, bh], -1) / s
    offset = jnp.stack([bx / s - j, by / s - i], -1)
    rel = (slots["vertebra_points"].reshape(-1, 6, 2) - jnp.stack([bx, by], -1)[:, None, :]) / s
    has_points = slots["vertebra_has_points"].astype(jnp.float32)
    cells = _cell_masks(vis, spec)
    inside = jnp.any(target[:, None, None] & cells, axis=0)
    weight = jnp.where(slots["vertebra_complete"] > 0, 1.0, inside.astype(jnp.float32))
    ignored = jnp.any(ignore[:, None, None] & cells, axis=0) & (centre == 0)
    weight = jnp.where(ignored, 0.0, weight) * annotated
    return {"heat": heat * annotated, "heat_weight": weight, "centre": centre * annotated,
            "size": at_centre(size), "offset": at_centre(offset),
            "points": at_centre(rel.reshape(-1, 12) * has_points[:, None]),
            "points_mask": at_centre(has_points[:, None])[..., 0] * annotated,
            "level": classes(slots["vertebra_level"]), "grade": classes(slots["vertebra_grade"]),
            "fractured": classes(slots["vertebra_fractured"]), "annotated": annotated}


def encode_batch(batch: Slots, spec: HeadSpec, warp: tuple[jax.Array, jax.Array, jax.Array] | None = None
                 ) -> dict[str, jax.Array]:
    """Dense targets of a batch from its slots (the ``vertebra_*`` keys of a training batch);
    ``warp``: per-example (angle in degrees, scale, mirror) of the augmentation, or None."""
    slots = {k: v for k, v in batch.items() if k.startswith("vertebra_")}
    if missing := [k for k in KEYS if k not in slots]:
        raise ValueError(f"the batch lacks the vertebra slots {missing} (vertex_jax.vertebrae.slots): "
                         "train with them, or with model.vertebrae off")
    if warp is not None:
        slots = jax.vmap(lambda sl, a, s, f: warp_slots(sl, spec.canvas, a, s, f))(slots, *warp)
    return jax.vmap(lambda sl: encode(sl, spec))(slots)

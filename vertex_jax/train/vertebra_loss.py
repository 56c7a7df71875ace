"""The vertebra head's losses (CenterNet), masked to annotated images.

- ``heat``: CenterNet's penalty-reduced focal loss (alpha 2, beta 4) over the cells where
  ``heat_weight`` counts, divided by the number of vertebra centres;
- ``size``, ``offset``: L1 at the centre cells, per coordinate (in cells);
- ``points``: L1 on the six endplate points where they are known, per coordinate (in cells);
- ``level``: cross-entropy over T4..L4 where the level is known;
- ``grade``: cross-entropy over Genant 0-3 where the grade is known, and where only
  ``fractured`` is, the binary cross-entropy of ``1 - p(grade 0)``.

Every term is a masked sum over the batch divided by its count (at least 1), so images
without annotations (``annotated`` 0: every mask 0) add exactly nothing. :data:`TERM_WEIGHTS`
combine them into one vertebra loss (CenterNet's 0.1 on the box size; the same on the
points, also in cells).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vertex_jax.vertebrae.targets import HeadSpec

TERM_WEIGHTS = {"heat": 1.0, "size": 0.1, "offset": 1.0, "points": 0.1, "level": 1.0, "grade": 1.0}


def _per(total: jax.Array, count: jax.Array) -> jax.Array:
    return total / jnp.maximum(count, 1.0)


def focal_loss(logits: jax.Array, heat: jax.Array, centre: jax.Array, weight: jax.Array) -> jax.Array:
    """CenterNet's penalty-reduced focal loss of heat-map logits [B, h, w] against Gaussian
    targets, over the cells with ``weight``, per centre."""
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    p = jnp.exp(log_p)
    pos = -((1.0 - p) ** 2) * log_p * centre
    neg = -((1.0 - heat) ** 4) * p ** 2 * log_not_p * (1.0 - centre)
    return _per(jnp.sum((pos + neg) * weight), jnp.sum(centre * weight))


def _cross_entropy(logits: jax.Array, classes: jax.Array, mask: jax.Array) -> jax.Array:
    """Summed cross-entropy at the cells of ``mask`` (classes -1 count as 0 there)."""
    lp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(lp, jnp.maximum(classes, 0)[..., None], axis=-1)[..., 0]
    return -jnp.sum(picked * mask)


def vertebra_losses(outputs: jax.Array, targets: dict[str, jax.Array], spec: HeadSpec
                    ) -> dict[str, jax.Array]:
    """Each term (see the module) of raw head outputs [B, h, w, channels] against the dense
    targets of :func:`vertex_jax.train.vertebra_targets.encode_batch`, float32 scalars."""
    out = {name: outputs[..., sl].astype(jnp.float32) for name, sl in spec.slices().items()}
    annotated = targets["annotated"].astype(jnp.float32)[:, None, None]
    centre = targets["centre"].astype(jnp.float32) * annotated
    n = jnp.sum(centre)
    points_mask = targets["points_mask"].astype(jnp.float32) * annotated
    level_mask = (targets["level"] >= 0) * centre
    grade_mask = (targets["grade"] >= 0) * centre
    fractured_mask = (targets["grade"] < 0) * (targets["fractured"] >= 0) * centre
    grade_lp = jax.nn.log_softmax(out["grade"], axis=-1)
    intact_lp = grade_lp[..., 0]
    fractured_lp = jnp.log(-jnp.expm1(jnp.minimum(intact_lp, -1e-7)))  # log(1 - p(grade 0))
    fractured = (targets["fractured"] == 1).astype(jnp.float32)
    fracture_ce = -jnp.sum((fractured * fractured_lp + (1.0 - fractured) * intact_lp) * fractured_mask)
    return {
        "heat": focal_loss(out["heat"][..., 0], targets["heat"].astype(jnp.float32), centre,
                           targets["heat_weight"].astype(jnp.float32) * annotated),
        "size": _per(jnp.sum(jnp.abs(out["size"] - targets["size"]) * centre[..., None]), 2 * n),
        "offset": _per(jnp.sum(jnp.abs(out["offset"] - targets["offset"]) * centre[..., None]), 2 * n),
        "points": _per(jnp.sum(jnp.abs(out["points"] - targets["points"]) * points_mask[..., None]),
                       12 * jnp.sum(points_mask)),
        "level": _per(_cross_entropy(out["level"], targets["level"], level_mask), jnp.sum(level_mask)),
        "grade": _per(_cross_entropy(out["grade"], targets["grade"], grade_mask) + fracture_ce,
                      jnp.sum(grade_mask) + jnp.sum(fractured_mask)),
    }


def vertebra_loss(terms: dict[str, jax.Array]) -> jax.Array:
    """The terms combined with :data:`TERM_WEIGHTS`."""
    return sum(TERM_WEIGHTS[k] * v for k, v in terms.items())

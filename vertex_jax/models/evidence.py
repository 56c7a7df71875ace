"""Feature taps and the evidence head: where in the image a score comes from.

Taps are the backbone's stage outputs (``"stage0"`` … ``"stage6"``) and its head convolution
(``"head"``), from :meth:`~vertex_jax.models.efficientnet.EfficientNet.taps`; this module
names their strides and channels.

``EvidenceHead`` turns a top-down feature pyramid (the coarsest tap, upsampled and added to
lateral projections of finer ones; e.g. the head features at stride 32 and stage 4 at 16, or
stage 3 and stage 2 alone, whose cells see only a few vertebrae) into per-position logits, one
map per task, and pools each map into the image logit:

- ``lse``: log-sum-exp, ``z = log(mean_ij exp(r * s_ij)) / r`` (between the mean and the max);
- ``max``: the multiple-instance rule, the image is positive if one position is
  (``z = max_ij s_ij``): only the strongest cell learns, so a fracture must be found somewhere;
- ``mean``: the class-activation map of a linear head.

One name pools every task alike; a comma list gives one per task (``"max,mean"``: a fracture
is one vertebra, osteoporosis is everywhere). Trained from image-level labels only, a
positive image needs only a few high cells, a negative one needs every cell low, so the map
itself carries the evidence; its softmax ``exp(r s_ij) / sum exp(r s)`` (r = 1 for ``max``)
is how much each position weighs in the score, the explanation shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vertex_jax.models.batchnorm import BatchNorm
from vertex_jax.models.efficientnet import HEAD, block_specs
from vertex_jax.errors import ConfigError

POOLINGS = ("lse", "max", "mean")


def tap_names(variant: str) -> tuple[str, ...]:
    """Every layer :meth:`EfficientNet.taps` can return, finest first."""
    return (*(f"stage{i}" for i in range(len(block_specs(variant)))), HEAD)


def tap_strides(variant: str) -> dict[str, int]:
    """Input pixels per feature-map cell for each tap (the stem halves the input)."""
    strides, stride = {}, 2
    for i, stage in enumerate(block_specs(variant)):
        stride *= stage[0].stride
        strides[f"stage{i}"] = stride
    strides[HEAD] = stride
    return strides


def tap_channels(variant: str, backbone_features: int) -> dict[str, int]:
    channels = {f"stage{i}": stage[-1].out_channels for i, stage in enumerate(block_specs(variant))}
    channels[HEAD] = backbone_features
    return channels


def check_taps(variant: str, taps: Sequence[str]) -> tuple[str, ...]:
    known = tap_names(variant)
    if not taps or any(t not in known for t in taps):
        raise ConfigError(f"layers must be names from {known}, got {tuple(taps)}")
    return tuple(taps)


def _upsample_to(x: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour 2x (or more) upsampling, cropped to ``shape`` (SAME padding rounds up)."""
    fy, fx = -(-shape[0] // x.shape[1]), -(-shape[1] // x.shape[2])
    x = jnp.repeat(jnp.repeat(x, fy, axis=1), fx, axis=2)
    return x[:, :shape[0], :shape[1]]


def task_poolings(pooling: str, num_tasks: int) -> tuple[str, ...]:
    """``"lse"`` -> the same for every task; ``"max,mean"`` -> one per task, in task order."""
    names = tuple(p.strip() for p in pooling.split(","))
    if len(names) == 1:
        names = names * num_tasks
    if len(names) != num_tasks or any(p not in POOLINGS for p in names):
        raise ConfigError(f"evidence pooling must be one of {POOLINGS} or one per task ({num_tasks}), "
                         f"got {pooling!r}")
    return names


class EvidenceHead(nnx.Module):
    """Top-down pyramid -> per-position logits [B, h, w, tasks] (float32) at the finest tap."""

    def __init__(self, channels: Mapping[str, int], taps: Sequence[str], num_tasks: int, *,
                 width: int = 64, dropout: float = 0.2, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.taps = tuple(taps)  # coarse to fine
        self.laterals = nnx.List([
            nnx.Conv(channels[t], width, (1, 1), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
            for t in self.taps])
        self.mix = nnx.Conv(width, width, (3, 3), padding="SAME", use_bias=False, dtype=dtype,
                            param_dtype=jnp.float32, rngs=rngs)
        self.mix_bn = BatchNorm(width, act=True, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.logits = nnx.Conv(width, num_tasks, (1, 1), dtype=jnp.float32, param_dtype=jnp.float32,
                               rngs=rngs)

    def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
        h = None
        for name, lateral in zip(self.taps, self.laterals):
            x = lateral(features[name])
            h = x if h is None else _upsample_to(h, x.shape[1:3]) + x
        h = self.mix_bn(self.mix(h))
        return self.logits(self.dropout(h).astype(jnp.float32))


def _pool(flat: jax.Array, pooling: str, r: float) -> jax.Array:
    if pooling == "mean":
        return jnp.mean(flat, axis=1)
    if pooling == "max":
        return jnp.max(flat, axis=1)
    return (jax.nn.logsumexp(r * flat, axis=1) - jnp.log(float(flat.shape[1]))) / r


def pool_evidence(evidence: jax.Array, pooling: str = "lse", r: float = 1.0) -> jax.Array:
    """[B, h, w, T] per-position logits -> [B, T] image logits (``pooling``: see the module)."""
    flat = evidence.reshape(evidence.shape[0], -1, evidence.shape[-1]).astype(jnp.float32)
    names = task_poolings(pooling, flat.shape[-1])
    return jnp.stack([_pool(flat[..., i], p, r) for i, p in enumerate(names)], axis=-1)


def _weights(flat: jax.Array, pooling: str, r: float) -> jax.Array:
    if pooling == "mean":
        return jax.nn.relu(flat)
    return jax.nn.softmax((r if pooling == "lse" else 1.0) * flat, axis=1)


def evidence_map(evidence: jax.Array, pooling: str = "lse", r: float = 1.0) -> jax.Array:
    """[B, h, w, T] per-position logits -> the explanation map of each task (non-negative).

    Log-sum-exp: each position's share of the image logit, ``softmax(r * s)`` over positions
    (it sums to 1 and is the weight of that position in the gradient of the pooled logit).
    Max: ``softmax(s)``, the same share at r = 1 (the gradient itself is one cell).
    Mean pooling (the class-activation map of a linear head): ``ReLU(s)``.
    """
    b, h, w, t = evidence.shape
    flat = evidence.reshape(b, h * w, t).astype(jnp.float32)
    names = task_poolings(pooling, t)
    return jnp.stack([_weights(flat[..., i], p, r) for i, p in enumerate(names)], axis=-1).reshape(b, h, w, t)

"""Feature taps and the evidence head: where in the image a score comes from.

Taps are the backbone's stage outputs (``"stage0"`` … ``"stage6"``) and its head convolution
(``"head"``), from :meth:`~vertex_jax.models.efficientnet.EfficientNet.taps`; this module
names their strides and channels.

``EvidenceHead`` turns a top-down feature pyramid (the head features at stride 32, upsampled
and added to lateral projections of finer stages) into per-position logits, one map per task,
and pools each map into the image logit by log-sum-exp:
``z = log(mean_ij exp(r * s_ij)) / r``. Trained from image-level labels only, a positive image
needs only a few high cells (a fracture is one vertebra), a negative one needs every cell low,
so the map itself carries the evidence; its softmax ``exp(r s_ij) / sum exp(r s)`` is exactly
how much each position contributes to the gradient of ``z`` and is the explanation shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vertex_jax.models.efficientnet import HEAD, BatchNorm, block_specs

POOLINGS = ("lse", "mean")


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
    if not taps or (unknown := [t for t in taps if t not in known]):
        raise ValueError(f"layers must be names from {known}, got {tuple(taps)}")
    return tuple(taps)


def _upsample_to(x: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour 2x (or more) upsampling, cropped to ``shape`` (SAME padding rounds up)."""
    fy, fx = -(-shape[0] // x.shape[1]), -(-shape[1] // x.shape[2])
    x = jnp.repeat(jnp.repeat(x, fy, axis=1), fx, axis=2)
    return x[:, :shape[0], :shape[1]]


class EvidenceHead(nnx.Module):
    """Top-down pyramid -> per-position logits [B, h, w, tasks] (float32) at the finest tap."""

    def __init__(self, channels: Mapping[str, int], taps: Sequence[str], num_tasks: int, *,
                 width: int = 64, dropout: float = 0.2, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.taps = tuple(taps)  # coarse to fine, starting with "head"
        if self.taps[0] != HEAD:
            raise ValueError(f"the evidence pyramid starts at {HEAD!r}, got {self.taps}")
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


def pool_evidence(evidence: jax.Array, pooling: str = "lse", r: float = 1.0) -> jax.Array:
    """[B, h, w, T] per-position logits -> [B, T] image logits."""
    flat = evidence.reshape(evidence.shape[0], -1, evidence.shape[-1]).astype(jnp.float32)
    if pooling == "mean":
        return jnp.mean(flat, axis=1)
    if pooling == "lse":
        n = flat.shape[1]
        return (jax.nn.logsumexp(r * flat, axis=1) - jnp.log(float(n))) / r
    raise ValueError(f"evidence pooling must be one of {POOLINGS}, got {pooling!r}")


def evidence_map(evidence: jax.Array, pooling: str = "lse", r: float = 1.0) -> jax.Array:
    """[B, h, w, T] per-position logits -> the explanation map of each task (non-negative).

    Log-sum-exp: each position's share of the image logit, ``softmax(r * s)`` over positions
    (it sums to 1 and is the weight of that position in the gradient of the pooled logit).
    Mean pooling (the class-activation map of a linear head): ``ReLU(s)``.
    """
    b, h, w, t = evidence.shape
    flat = evidence.reshape(b, h * w, t).astype(jnp.float32)
    if pooling == "mean":
        return jax.nn.relu(flat).reshape(b, h, w, t)
    if pooling != "lse":
        raise ValueError(f"evidence pooling must be one of {POOLINGS}, got {pooling!r}")
    return jax.nn.softmax(r * flat, axis=1).reshape(b, h, w, t)

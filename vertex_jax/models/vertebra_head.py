"""The vertebra head: dense per-cell outputs at stride 8 (or 4) from the backbone's feature pyramid.

A small top-down pyramid (FPN-like): 1×1 lateral projections of the last stage output at
strides 32, 16 and 8, and 4 for a stride-4 grid (:func:`vertebra_taps`), each coarser sum
upsampled (nearest) and added to the next finer one, then a 3×3 convolution with BatchNorm and
swish per entry of ``dilations`` (its dilation: rates above 1 widen the receptive field at the same
cost), and a 1×1
convolution to the head's channels, float32. Channel 0 is the vertebra-centre heat-map logit
(the layout of :class:`vertex_jax.vertebrae.targets.HeadSpec`); its bias starts at
``log(p / (1 - p))`` with ``p = 0.1`` (about -2.2, CenterNet's prior), so the focal loss of the
mostly empty map starts small.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vertex_jax.models.batchnorm import BatchNorm
from vertex_jax.errors import ConfigError
from vertex_jax.models.evidence import _upsample_to, tap_strides

VERTEBRA_TAPS = ("stage6", "stage4", "stage2", "stage1")  # coarse to fine: strides 32, 16, 8, 4
HEAT_PRIOR = 0.1


def vertebra_taps(variant: str, stride: int) -> tuple[str, ...]:
    """The pyramid's taps for a grid of ``stride`` canvas pixels per cell, coarse to fine:
    every tap of :data:`VERTEBRA_TAPS` at that stride or coarser, the finest at ``stride``."""
    strides = tap_strides(variant)
    taps = tuple(t for t in VERTEBRA_TAPS if strides[t] >= stride)
    if not taps or strides[taps[-1]] != stride:
        raise ConfigError(f"model.vertebra_stride must be one of "
                          f"{sorted({strides[t] for t in VERTEBRA_TAPS})}, got {stride}")
    return taps


class VertebraHead(nnx.Module):
    """Backbone taps -> [B, H/S, W/S, outputs] float32 (channel 0: the heat-map logit), S the
    stride of the finest of ``taps``."""

    def __init__(self, channels: Mapping[str, int], outputs: int, *, taps: tuple[str, ...] = VERTEBRA_TAPS[:3],
                 width: int = 64, dilations: tuple[int, ...] = (1, 1), dtype: Any = jnp.float32,
                 rngs: nnx.Rngs):
        self.taps = taps
        self.laterals = nnx.List([
            nnx.Conv(channels[t], width, (1, 1), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
            for t in taps])
        self.convs = nnx.List([
            nnx.Conv(width, width, (3, 3), padding="SAME", kernel_dilation=d, use_bias=False, dtype=dtype,
                     param_dtype=jnp.float32, rngs=rngs) for d in dilations])
        self.norms = nnx.List([BatchNorm(width, act=True, dtype=dtype, rngs=rngs) for _ in dilations])
        self.output = nnx.Conv(width, outputs, (1, 1), dtype=jnp.float32, param_dtype=jnp.float32,
                               rngs=rngs)
        bias = self.output.bias[...]
        self.output.bias[...] = bias.at[0].set(math.log(HEAT_PRIOR / (1.0 - HEAT_PRIOR)))

    def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
        h = None
        for name, lateral in zip(self.taps, self.laterals):
            x = lateral(features[name])
            h = x if h is None else _upsample_to(h, x.shape[1:3]) + x
        for conv, norm in zip(self.convs, self.norms):
            h = norm(conv(h))
        return self.output(h.astype(jnp.float32))

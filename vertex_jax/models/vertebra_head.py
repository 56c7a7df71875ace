"""The vertebra head: dense per-cell outputs at stride 8 from the backbone's feature pyramid.

A small top-down pyramid (FPN-like): 1×1 lateral projections of the last stage output at
strides 32, 16 and 8 (:data:`VERTEBRA_TAPS`), each coarser sum upsampled (nearest) and added
to the next finer one, then ``depth`` 3×3 convolutions with BatchNorm and swish, and a 1×1
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

from vertex_jax.models.efficientnet import BatchNorm
from vertex_jax.models.evidence import _upsample_to

VERTEBRA_TAPS = ("stage6", "stage4", "stage2")  # coarse to fine: strides 32, 16, 8
HEAT_PRIOR = 0.1


class VertebraHead(nnx.Module):
    """Backbone taps -> [B, H/8, W/8, outputs] float32 (channel 0: the heat-map logit)."""

    def __init__(self, channels: Mapping[str, int], outputs: int, *, width: int = 64, depth: int = 2,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.laterals = nnx.List([
            nnx.Conv(channels[t], width, (1, 1), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
            for t in VERTEBRA_TAPS])
        self.convs = nnx.List([
            nnx.Conv(width, width, (3, 3), padding="SAME", use_bias=False, dtype=dtype,
                     param_dtype=jnp.float32, rngs=rngs) for _ in range(depth)])
        self.norms = nnx.List([BatchNorm(width, act=True, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.output = nnx.Conv(width, outputs, (1, 1), dtype=jnp.float32, param_dtype=jnp.float32,
                               rngs=rngs)
        bias = self.output.bias[...]
        self.output.bias[...] = bias.at[0].set(math.log(HEAT_PRIOR / (1.0 - HEAT_PRIOR)))

    def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
        h = None
        for name, lateral in zip(VERTEBRA_TAPS, self.laterals):
            x = lateral(features[name])
            h = x if h is None else _upsample_to(h, x.shape[1:3]) + x
        for conv, norm in zip(self.convs, self.norms):
            h = norm(conv(h))
        return self.output(h.astype(jnp.float32))

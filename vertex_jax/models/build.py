"""The network a run's config describes, freshly initialised (never with pretrained weights).

Training loads ``config.model.init_weights`` into the backbone itself
(:func:`vertex_jax.models.weights.load_pretrained`); everything that restores a checkpoint
builds the model here and then overwrites its arrays.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from vertex_jax.models.efficientnet import set_bn_impl, set_bn_momentum
from vertex_jax.models.vertex import VertexNet
from vertex_jax.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def tasks_of(config: Any) -> tuple[str, ...]:
    """``config.tasks`` (a comma-separated string or a sequence) as a tuple of names."""
    tasks = config.tasks.split(",") if isinstance(config.tasks, str) else config.tasks
    return tuple(t.strip() for t in tasks if t.strip())


def build_model(config: Any, seed: int) -> VertexNet:
    """``VertexNet`` per ``config.model`` and ``config.tasks``, initialised from ``seed``."""
    m = config.model
    if m.dtype not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
    vertebra_channels = 0
    if m.vertebrae:  # imported here: the paper's network needs none of it (nor OpenCV)
        from vertex_jax.vertebrae.targets import HeadSpec
        vertebra_channels = HeadSpec().channels
    model = VertexNet(variant=m.variant, tasks=tasks_of(config), use_clinical=m.use_clinical,
                      dtype=DTYPES[m.dtype], remat=m.remat, depthwise=m.depthwise, padding=m.padding,
                      head=m.head, evidence_taps=tuple(t.strip() for t in m.evidence_taps.split(",")),
                      evidence_width=m.evidence_width, pooling=m.pooling, lse_r=m.lse_r,
                      vertebra_channels=vertebra_channels,
                      rngs=nnx.Rngs(seed))
    set_bn_momentum(model, m.bn_momentum)  # backbone and evidence head
    set_bn_impl(model, m.batchnorm)
    return model

"""The network a run's config describes, freshly initialised (never with pretrained weights).

Training loads ``config.model.init_weights`` into the backbone itself
(:func:`vertex_jax.models.weights.load_pretrained`); everything that restores a checkpoint
builds the model here and then overwrites its arrays.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from vertex_jax.models.efficientnet import BN_MOMENTUM, set_bn_impl, set_bn_momentum
from vertex_jax.models.vertex import VertexNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def tasks_of(config: Any) -> tuple[str, ...]:
    """``config.tasks`` (a comma-separated string or a sequence) as a tuple of names."""
    tasks = config.tasks.split(",") if isinstance(config.tasks, str) else config.tasks
    return tuple(t.strip() for t in tasks if t.strip())


def build_model(config: Any, seed: int) -> VertexNet:
    """``VertexNet`` per ``config.model`` and ``config.tasks``, initialised from ``seed``."""
    m = config.model
    if m.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
    model = VertexNet(variant=m.variant, tasks=tasks_of(config), use_clinical=m.use_clinical,
                      dtype=DTYPES[m.dtype], remat=m.remat, depthwise=m.get("depthwise", "auto"),
                      padding=m.get("padding", "tf"),
                      head=m.get("head", "gap"),
                      evidence_taps=tuple(t.strip() for t in m.get("evidence_taps", "head,stage4").split(",")),
                      evidence_width=m.get("evidence_width", 64), pooling=m.get("pooling", "lse"),
                      lse_r=m.get("lse_r", 1.0), rngs=nnx.Rngs(seed))
    set_bn_momentum(model, m.get("bn_momentum", BN_MOMENTUM))  # backbone and evidence head
    set_bn_impl(model, m.get("batchnorm", "auto"))
    return model

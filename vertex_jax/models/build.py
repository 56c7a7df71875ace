"""The network a run's config describes, freshly initialised (never with pretrained weights).

Training loads ``config.model.init_weights`` into the backbone itself
(:func:`vertex_jax.models.weights.load_pretrained`); everything that restores a checkpoint
builds the model here and then overwrites its arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
from flax import nnx

from vertex_jax.models.batchnorm import set_bn_impl, set_bn_momentum
from vertex_jax.models.convolutions import set_pointwise_impl
from vertex_jax.models.efficientnet import set_fold_bn, set_se_forms
from vertex_jax.models.vertex import VertexNet
from vertex_jax.errors import ConfigError

if TYPE_CHECKING:
    from vertex_jax.vertebrae.targets import HeadSpec

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def tasks_of(config: Any) -> tuple[str, ...]:
    """``config.tasks`` (a comma-separated string or a sequence) as a tuple of names."""
    tasks = config.tasks.split(",") if isinstance(config.tasks, str) else config.tasks
    return tuple(t.strip() for t in tasks if t.strip())


def vertebra_spec(config: Any) -> "HeadSpec":
    """The vertebra head's grid and channel layout for ``config`` (its canvas and
    ``model.vertebra_stride``): what training encodes and prediction decodes."""
    # Imported here: the paper's network needs none of it (nor OpenCV).
    from vertex_jax.vertebrae.targets import HeadSpec
    return HeadSpec(stride=int(config.model.vertebra_stride), canvas=tuple(config.data.canvas))


def _ints(text: str, field: str) -> tuple[int, ...]:
    """"1,2" -> (1, 2): positive integers, at least one."""
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ConfigError(f"{field} must be comma-separated positive integers, e.g. 1,2; got {text!r}")
    return values


def build_model(config: Any, seed: int) -> VertexNet:
    """``VertexNet`` per ``config.model`` and ``config.tasks``, initialised from ``seed``."""
    m = config.model
    if m.dtype not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
    vertebra_channels = vertebra_spec(config).channels if m.vertebrae else 0
    model = VertexNet(variant=m.variant, tasks=tasks_of(config), use_clinical=m.use_clinical,
                      dtype=DTYPES[m.dtype], remat=m.remat, recompute=m.recompute,
                      recompute_stages=m.recompute_stages,
                      depthwise=m.depthwise, padding=m.padding,
                      head=m.head, evidence_taps=tuple(t.strip() for t in m.evidence_taps.split(",")),
                      evidence_width=m.evidence_width, pooling=m.pooling, lse_r=m.lse_r,
                      vertebra_channels=vertebra_channels, vertebra_stride=m.vertebra_stride,
                      vertebra_dilations=_ints(m.vertebra_dilations, "model.vertebra_dilations"),
                      vertebra_detach=m.vertebra_detach,
                      rngs=nnx.Rngs(seed))
    set_bn_momentum(model, m.bn_momentum)  # backbone and evidence head
    set_bn_impl(model, m.batchnorm, m.batchnorm_grad)
    set_se_forms(model, dense=m.se_dense, pool=m.se_pool)
    set_fold_bn(model, m.fold_bn)
    set_pointwise_impl(model, m.pointwise)
    return model

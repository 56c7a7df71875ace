"""The model, optimizer and their state as one pytree (what is stepped and checkpointed)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax
from flax import nnx

from vertex_jax.models.vertex import VertexNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def tasks_of(config: Any) -> tuple[str, ...]:
    tasks = config.tasks.split(",") if isinstance(config.tasks, str) else config.tasks
    return tuple(t.strip() for t in tasks if t.strip())


def build_model(config: Any, seed: int) -> VertexNet:
    m = config.model
    if m.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {m.dtype!r}")
    model = VertexNet(variant=m.variant, tasks=tasks_of(config), use_clinical=m.use_clinical,
                      dtype=DTYPES[m.dtype], remat=m.remat, depthwise=m.get("depthwise", "auto"),
                      rngs=nnx.Rngs(seed))
    if m.init_weights:
        from vertex_jax.models.weights import load_pretrained
        load_pretrained(model.backbone, m.init_weights)
    return model


def build_optimizer(config: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with decoupled weight decay, warm-up + cosine, global-norm clipping."""
    o = config.optim
    total = max(1, config.num_epochs * steps_per_epoch // o.grad_accum)
    warmup = min(total - 1, int(o.warmup_epochs * steps_per_epoch / o.grad_accum))
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, total, o.lr * o.min_lr_ratio)
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm) if o.clip_norm else optax.identity(),
                     optax.adamw(schedule, weight_decay=o.weight_decay))
    return optax.MultiSteps(tx, o.grad_accum) if o.grad_accum > 1 else tx


@dataclasses.dataclass
class TrainState:
    """``graphdef`` (static structure) and ``state`` (every array: params, BatchNorm
    statistics, dropout RNG counters, optimizer moments and step)."""

    graphdef: nnx.GraphDef
    state: nnx.State

    @classmethod
    def create(cls, model: VertexNet, tx: optax.GradientTransformation) -> "TrainState":
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        graphdef, state = nnx.split((model, optimizer))
        return cls(graphdef, state)

    def merge(self, state: nnx.State | None = None) -> tuple[VertexNet, nnx.Optimizer]:
        return nnx.merge(self.graphdef, self.state if state is None else state)

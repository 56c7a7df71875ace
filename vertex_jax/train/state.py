"""The optimizer, and the model with it as one pytree (what is stepped and checkpointed).

The model itself is built by :func:`vertex_jax.models.build.build_model`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import optax
from flax import nnx

from vertex_jax.models.build import build_model
from vertex_jax.models.vertex import VertexNet
from vertex_jax.auto_setting import auto_enabled
from vertex_jax.errors import ConfigError


def build_optimizer(config: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam with decoupled weight decay, warm-up + cosine, global-norm clipping.

    ``optim.flatten`` (:func:`flatten_enabled`): the same updates on one concatenated
    vector (``optax.flatten``), so the optimizer's moments are two arrays instead of two per
    parameter -- fewer buffers to pass and donate, fewer kernels per step, a faster
    compile. Checkpoints keep the per-parameter form either way (:mod:`.moments`)."""
    o = config.optim
    total = max(1, config.num_epochs * steps_per_epoch // o.grad_accum)
    warmup = min(total - 1, int(o.warmup_epochs * steps_per_epoch / o.grad_accum))
    schedule = optax.warmup_cosine_decay_schedule(0.0, o.lr, warmup, total, o.lr * o.min_lr_ratio)
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm) if o.clip_norm else optax.identity(),
                     optax.adamw(schedule, weight_decay=o.weight_decay))
    if flatten_enabled(config):
        tx = optax.flatten(tx)
    frozen = frozen_prefixes(o.freeze_stages)
    if frozen:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   lambda params: _labels(params, frozen))
    return optax.MultiSteps(tx, o.grad_accum) if o.grad_accum > 1 else tx


def model_and_optimizer(config: Any, steps_per_epoch: int, seed: int) -> tuple[VertexNet, nnx.Optimizer]:
    """A fresh model per ``config`` and its optimizer over the parameters: what training
    steps and checkpoints (``TrainState``'s structure)."""
    model = build_model(config, seed=seed)
    return model, nnx.Optimizer(model, build_optimizer(config, steps_per_epoch), wrt=nnx.Param)


def flatten_enabled(config: Any) -> bool:
    """``config.optim.flatten``: true, false or ``auto`` (flat on accelerators, where fewer
    kernels per step pay; per parameter on CPUs)."""
    return auto_enabled(config.optim.flatten, "optim.flatten")


def frozen_prefixes(freeze_stages: int) -> tuple[str, ...]:
    """Parameter-name prefixes kept fixed: the stem and the first ``freeze_stages`` stages
    of the backbone (0: train everything). Their BatchNorm statistics still update."""
    if freeze_stages < 0:
        raise ConfigError(f"optim.freeze_stages must be >= 0, got {freeze_stages}")
    if not freeze_stages:
        return ()
    return ("backbone/stem_", *(f"backbone/stages/{i}/" for i in range(freeze_stages)))


def _labels(params: Any, frozen: tuple[str, ...]) -> Any:
    def label(path, _):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return "frozen" if name.startswith(frozen) else "train"
    return jax.tree_util.tree_map_with_path(label, params)


def initialise(create: Callable[[], Any], out_shardings: Any = None) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and state of the modules ``create()`` returns, the arrays made by one
    compiled program without backend optimisation (it runs once): op by op, every
    initialiser compiles on its own, which takes tens of seconds for B4 on a GPU. The
    modules are built once, in that program's trace, which also gives the graph definition."""
    graphdefs = []

    def init() -> nnx.State:
        graphdef, state = nnx.split(create())
        graphdefs.append(graphdef)  # static structure, no arrays: traced once, kept
        return state

    compiled = jax.jit(init, out_shardings=out_shardings).lower().compile({"xla_backend_optimization_level": 0})
    return graphdefs[0], compiled()


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

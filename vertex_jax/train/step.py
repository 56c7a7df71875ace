"""The jitted training and evaluation steps."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from vertex_jax.mesh import batch_sharded, replicated
from vertex_jax.models.build import vertebra_spec
from vertex_jax.models.efficientnet import to_unit_float
from vertex_jax.train.augment import AugmentConfig, augment_batch, example_keys, hide_clinical, warp_params
from vertex_jax.train.packing import PARAMS, StatePacking
from vertex_jax.train.state import flatten_enabled

Batch = dict[str, jax.Array]


def masked_bce(logits: jax.Array, labels: jax.Array, mask: jax.Array,
               pos_weight: Sequence[float] = ()) -> jax.Array:
    """Binary cross-entropy with logits, averaged over known labels (float32).

    ``pos_weight[t]`` scales the positive term of task ``t`` (class imbalance).
    """
    logits = logits.astype(jnp.float32)
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    w = jnp.asarray(pos_weight, jnp.float32) if len(pos_weight) else 1.0
    per = -(w * labels * log_p + (1.0 - labels) * log_not_p)
    return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(graphdef: nnx.GraphDef, config: Any, mesh: Mesh,
                    packing: StatePacking | None = None
                    ) -> Callable[[nnx.State, Batch], tuple[nnx.State, dict[str, jax.Array]]]:
    """``(state, batch) -> (state, metrics)``; the state buffers are donated. With
    ``packing`` the step takes and returns the packed state (:mod:`vertex_jax.train.packing`),
    and with flat Adam moments too (:func:`updates_flat`) the optimizer updates the packed
    parameter vector as it is: no per-parameter updates, additions and repacking."""
    flat = packing is not None and updates_flat(config, packing)
    aug = AugmentConfig.from_config(config.augment)
    pos_weight = tuple(config.optim.pos_weight)
    skip_nonfinite = config.nan_policy == "skip"
    clinical_dropout = float(config.augment.clinical_dropout)
    spec, vertebrae_weight = None, float(config.loss.vertebrae_weight)
    if config.model.vertebrae:  # imported here: the paper's network needs none of it (nor OpenCV)
        from vertex_jax.train.vertebra_loss import vertebra_loss, vertebra_losses
        from vertex_jax.train.vertebra_targets import encode_batch
        spec = vertebra_spec(config)

    def step(state_in: Any, batch: Batch):
        state = packing.unpack(state_in) if packing is not None else state_in
        # copy=True: the update below must not write through to ``state`` (kept for "skip").
        model, optimizer = nnx.merge(graphdef, state, copy=True)
        model.train()
        keys = example_keys(config.seed, batch["epoch"], batch["index"])
        if config.augment.enabled:
            images = augment_batch(batch["image"], keys, aug)
        else:
            images = to_unit_float(batch["image"])
        clinical_mask = hide_clinical(batch["clinical_mask"], keys, clinical_dropout)
        targets = None
        if spec is not None:  # the annotations move with the pixels: the same warp, drawn again
            targets = encode_batch(batch, spec, warp_params(keys, aug) if config.augment.enabled else None)

        def loss_fn(model):
            if targets is None:
                logits = model(images, batch["clinical"] * clinical_mask, clinical_mask)
                return masked_bce(logits, batch["labels"], batch["label_mask"], pos_weight), {}
            out = model.outputs(images, batch["clinical"] * clinical_mask, clinical_mask)
            image_loss = masked_bce(out["logits"], batch["labels"], batch["label_mask"], pos_weight)
            terms = vertebra_losses(out["vertebrae"], targets, spec)
            v_loss = vertebra_loss(terms)
            return image_loss + vertebrae_weight * v_loss, {
                "image_loss": image_loss, "vertebra_loss": v_loss,
                **{f"vertebra_{k}": t for k, t in terms.items()}}

        (loss, parts), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        if flat:
            flat_grads = _raveled(grads)
            grad_norm = optax.tree.norm(flat_grads)
            params = _update_vector(optimizer, state_in[PARAMS], flat_grads)
            new_state = packing.pack(nnx.state((model, optimizer)), params=params)
        else:
            grad_norm = optax.tree.norm(grads)
            optimizer.update(model, grads)
            new_state = nnx.state((model, optimizer))
            if packing is not None:
                new_state = packing.pack(new_state)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state_in)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite, **parts}

    return jax.jit(step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   out_shardings=(replicated(mesh), replicated(mesh)), donate_argnums=0)


def updates_flat(config: Any, packing: StatePacking) -> bool:
    """Whether the packed step can update the parameters as one vector: flat Adam moments
    (``optim.flatten``), a ``"params"`` buffer, and an optimizer that is one flat transform
    (no frozen stages, whose labels are per parameter, and no gradient accumulation, whose
    accumulator is)."""
    return (flatten_enabled(config) and PARAMS in packing.sizes
            and config.optim.freeze_stages == 0 and config.optim.grad_accum == 1)


class _Vector(nnx.Module):
    """A module whose one parameter is a vector: what the optimizer updates in the flat step."""

    def __init__(self, vector: jax.Array) -> None:
        self.vector = nnx.Param(vector)


def _raveled(grads: nnx.State) -> jax.Array:
    """The parameters' gradients as one vector, in tree order (``optax.flatten``'s)."""
    return jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(nnx.state(grads, nnx.Param))])


def _update_vector(optimizer: nnx.Optimizer, params: jax.Array, grads: jax.Array) -> jax.Array:
    """The parameter vector after one optimizer step on ``grads``; updates ``optimizer``'s
    moments and step count. ``optax.flatten``'s state is its inner transform's state of the
    flat vector, so it is the same state whether the parameters come as a tree or as this
    one vector."""
    vector = _Vector(params)
    optimizer.update(vector, nnx.state(_Vector(grads)))
    return vector.vector[...]


def make_eval_step(graphdef: nnx.GraphDef, mesh: Mesh
                   ) -> Callable[[nnx.State, Batch], dict[str, jax.Array]]:
    """``(state, batch) -> {probs, logits, labels, label_mask, valid, index}`` (batch-sharded)."""

    def step(state: nnx.State, batch: Batch):
        model, _ = nnx.merge(graphdef, state)
        model.eval()
        logits = model(batch["image"], batch["clinical"], batch["clinical_mask"]).astype(jnp.float32)
        return {"probs": jax.nn.sigmoid(logits), "logits": logits, "labels": batch["labels"],
                "label_mask": batch["label_mask"], "valid": batch["valid"], "index": batch["index"]}

    return jax.jit(step, in_shardings=(replicated(mesh), batch_sharded(mesh)),
                   out_shardings=batch_sharded(mesh))

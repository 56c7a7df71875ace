"""The optimizer's state as checkpoints keep it: one array per parameter, whatever
``optim.flatten`` is.

With ``optim.flatten`` the optimizer (``optax.flatten``) keeps Adam's moments as one vector
each, the parameters' leaves raveled and concatenated in tree order; without it, one array
per parameter. A checkpoint always holds the per-parameter form, so a run trained with
either setting resumes, or is resumed from (``config.resume``), under the other (a GPU run
with the flat form, continued on a CPU without it). The conversion is exact: it only
slices and concatenates.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vertex_jax.train.state import model_and_optimizer

__all__ = ["MomentLayout"]


def _split(vector: jax.Array, like: Any) -> Any:
    """``vector`` cut into the arrays of ``like`` (a tree), in its leaves' order."""
    leaves, treedef = jax.tree.flatten(like)
    cuts = np.cumsum([leaf.size for leaf in leaves])[:-1]
    parts = jnp.split(vector, cuts) if leaves else []
    return jax.tree.unflatten(treedef, [p.reshape(leaf.shape) for p, leaf in zip(parts, leaves)])


def _concatenated(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves]) if leaves else jnp.zeros((0,))


def _abstract_state(config: Any, steps_per_epoch: int, flat: bool) -> nnx.State:
    """The (model, optimizer) state of ``config`` with ``optim.flatten`` set to ``flat``,
    shapes only."""
    config = config.copy_and_resolve_references()
    setting = config.optim.flatten
    config.optim.flatten = flat if isinstance(setting, bool) else str(flat).lower()
    return nnx.split(nnx.eval_shape(lambda: model_and_optimizer(config, steps_per_epoch, seed=0)))[1]


def _filled(template: nnx.State, values: dict) -> nnx.State:
    """A new State of ``template``'s variables holding the pure-dict ``values``."""
    out = jax.tree.map(lambda x: x, template)
    nnx.replace_by_pure_dict(out, values)
    return out


class MomentLayout:
    """Converts a training state between the flat optimizer form (``flat``, the abstract
    state with ``optim.flatten``) and the per-parameter form checkpoints keep
    (``per_parameter``, the abstract state without it). Every leaf of the flat form is a
    leaf or a whole subtree (a moment's parameters) of the other."""

    def __init__(self, flat: nnx.State, per_parameter: nnx.State, sharding: Any = None) -> None:
        self.flat, self.per_parameter = flat, per_parameter
        self.to_saved = jax.jit(self._to_saved, out_shardings=sharding)
        self.from_saved = jax.jit(self._from_saved, out_shardings=sharding)

    @classmethod
    def of(cls, config: Any, steps_per_epoch: int, sharding: Any = None) -> "MomentLayout":
        """The layout of ``config``'s training state (``sharding``: the converted arrays')."""
        return cls(*(_abstract_state(config, steps_per_epoch, flat) for flat in (True, False)), sharding)

    def _to_saved(self, state: nnx.State) -> nnx.State:
        """The per-parameter form of a flat-form ``state`` (what a checkpoint holds)."""
        values = jax.tree.map(lambda leaf, sub: _split(leaf, sub) if isinstance(sub, dict) else leaf,
                              nnx.to_pure_dict(state), nnx.to_pure_dict(self.per_parameter))
        return _filled(self.per_parameter, values)

    def _from_saved(self, state: nnx.State) -> nnx.State:
        """The flat form of a per-parameter ``state`` (a restored checkpoint)."""
        values = jax.tree.map(lambda _, sub: _concatenated(sub) if isinstance(sub, dict) else sub,
                              nnx.to_pure_dict(self.flat), nnx.to_pure_dict(state))
        return _filled(self.flat, values)

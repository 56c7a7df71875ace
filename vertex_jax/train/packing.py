"""A training state packed into a few flat buffers, and back.

The state of B4 + fusion is ~1,500 arrays (parameters, BatchNorm statistics, Adam
moments); passing them to a jitted step costs host time per array on every dispatch
(``dispatch_s`` in the bench records). Packed, the step takes and returns a few
buffers and unpacks them inside the compiled program (slices and one concatenation
per buffer: a copy of the state, small beside the activations).

The trainable parameters (``nnx.Param``) get a buffer of their own, ``"params"``, in tree
order: the vector ``optax.flatten`` makes of them, so a step with flat Adam moments updates
the parameters as that one vector (:mod:`vertex_jax.train.step`). Every other array goes
into the buffer of its dtype.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vertex_jax.auto_setting import auto_enabled

__all__ = ["PARAMS", "StatePacking", "pack_state_enabled"]

PARAMS = "params"  # the group of the trainable parameters


def pack_state_enabled(config: Any) -> bool:
    """``config.pack_state``: true, false, or ``auto`` (packed on accelerators, +2.3% on an
    H200 with ``optim.flatten``; not on CPUs, where the copies in and out make the step slower)."""
    return auto_enabled(config.pack_state, "pack_state")


@dataclasses.dataclass(frozen=True)
class _Slot:
    group: str
    offset: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def _groups(abstract: Any, leaves: list[Any]) -> list[str]:
    """Each leaf's buffer: ``PARAMS`` for the ``nnx.Param`` leaves when they share one dtype,
    else the dtype's name."""
    variables = jax.tree.leaves(abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
    is_param = [isinstance(v, nnx.Param) for v in variables]
    if len(variables) != len(leaves):  # a Variable holding several arrays: no parameter group
        is_param = [False] * len(leaves)
    param_dtypes = {leaf.dtype for leaf, p in zip(leaves, is_param) if p}
    apart = len(param_dtypes) == 1
    return [PARAMS if apart and p else str(leaf.dtype) for leaf, p in zip(leaves, is_param)]


class StatePacking:
    """Packs pytrees shaped like ``abstract`` (arrays or ``ShapeDtypeStruct``s) into
    ``{group: 1-D buffer}`` and back; the layout is fixed at construction."""

    def __init__(self, abstract: Any) -> None:
        leaves, self.treedef = jax.tree.flatten(abstract)
        sizes: dict[str, int] = {}
        self.dtypes: dict[str, Any] = {}
        self.slots: list[_Slot] = []
        for leaf, group in zip(leaves, _groups(abstract, leaves)):
            self.dtypes.setdefault(group, leaf.dtype)
            slot = _Slot(group, sizes.get(group, 0), tuple(leaf.shape))
            sizes[group] = slot.offset + slot.size
            self.slots.append(slot)
        self.sizes = sizes

    def pack(self, tree: Any, params: jax.Array | None = None) -> dict[str, jax.Array]:
        """``tree``'s leaves, raveled and concatenated per group (traceable). ``params``, when
        given, is the ``"params"`` buffer itself: ``tree``'s parameters are not read."""
        leaves = self.treedef.flatten_up_to(tree)
        parts: dict[str, list[jax.Array]] = {group: [] for group in self.sizes}
        for slot, leaf in zip(self.slots, leaves):
            if params is None or slot.group != PARAMS:
                parts[slot.group].append(jnp.ravel(leaf))
        packed = {group: jnp.concatenate(p) if len(p) > 1 else p[0] for group, p in parts.items() if p}
        if params is not None:
            if params.shape != (self.sizes.get(PARAMS, -1),):
                raise ValueError(f"params: expected shape ({self.sizes.get(PARAMS)},), got {params.shape}")
            packed[PARAMS] = params
        return packed

    def unpack(self, packed: dict[str, jax.Array]) -> Any:
        """The pytree whose leaves :meth:`pack` concatenated (traceable)."""
        leaves = [jax.lax.slice(packed[s.group], (s.offset,), (s.offset + s.size,)).reshape(s.shape)
                  for s in self.slots]
        return jax.tree.unflatten(self.treedef, leaves)

"""A training state packed into one flat buffer per dtype, and back.

The state of B4 + fusion is ~1,500 arrays (parameters, BatchNorm statistics, Adam
moments); passing them to a jitted step costs host time per array on every dispatch
(``dispatch_s`` in the bench records). Packed, the step takes and returns a few
buffers and unpacks them inside the compiled program (slices and one concatenation
per dtype: a copy of the state, small beside the activations).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vertex_jax.auto_setting import auto_enabled

__all__ = ["StatePacking", "pack_state_enabled"]


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


class StatePacking:
    """Packs pytrees shaped like ``abstract`` (arrays or ``ShapeDtypeStruct``s) into
    ``{dtype name: 1-D buffer}`` and back; the layout is fixed at construction."""

    def __init__(self, abstract: Any) -> None:
        leaves, self.treedef = jax.tree.flatten(abstract)
        sizes: dict[str, int] = {}
        self.dtypes: dict[str, Any] = {}
        self.slots: list[_Slot] = []
        for leaf in leaves:
            group = str(leaf.dtype)
            self.dtypes.setdefault(group, leaf.dtype)
            slot = _Slot(group, sizes.get(group, 0), tuple(leaf.shape))
            sizes[group] = slot.offset + slot.size
            self.slots.append(slot)
        self.sizes = sizes

    def pack(self, tree: Any) -> dict[str, jax.Array]:
        """``tree``'s leaves, raveled and concatenated per dtype (traceable)."""
        leaves = self.treedef.flatten_up_to(tree)
        parts: dict[str, list[jax.Array]] = {group: [] for group in self.sizes}
        for slot, leaf in zip(self.slots, leaves):
            parts[slot.group].append(jnp.ravel(leaf))
        return {group: jnp.concatenate(p) if len(p) > 1 else p[0] for group, p in parts.items()}

    def unpack(self, packed: dict[str, jax.Array]) -> Any:
        """The pytree whose leaves :meth:`pack` concatenated (traceable)."""
        leaves = [jax.lax.slice(packed[s.group], (s.offset,), (s.offset + s.size,)).reshape(s.shape)
                  for s in self.slots]
        return jax.tree.unflatten(self.treedef, leaves)

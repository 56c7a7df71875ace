"""Import pretrained EfficientNet weights (Keras `.h5` / `.weights.h5`, timm `.safetensors` / `.pth`).

Every parameter and BatchNorm statistic of the backbone must be found in the file with the
right shape, and every tensor in the file must be used; otherwise `WeightImportError` lists
the missing, unexpected and mis-shaped tensors. Deliberately unused: the Keras input
`normalization` layer (this code applies the same ImageNet normalisation itself, see
`normalize_input`) and timm's `num_batches_tracked` counters.

The classifier is optional on both sides, so files "with or without top" load into models
with or without a head: by default (`load_head=None`) it is loaded when both have one of the
same shape; `True` requires it, `False` skips it.

3-channel stem weights load into a 1-channel model by summing the stem kernel over the
colour channels (exact for grey images, given the channel-averaged input normalisation).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import jax
from flax import nnx

from vertex_jax.models import keras_weights, timm_weights
from vertex_jax.models.efficientnet import EfficientNet
from vertex_jax.models.weight_maps import ImportReport, WeightImportError
from vertex_jax.errors import MissingInputError

__all__ = ["WeightImportError", "ImportReport", "load_pretrained", "build_pretrained"]

M = TypeVar("M", bound=nnx.Module)


def load_pretrained(model: EfficientNet, path: str | os.PathLike, *,
                    load_head: bool | None = None) -> ImportReport:
    """Load a Keras (`.h5`, `.weights.h5`) or timm `tf_efficientnet_b*` (`.safetensors`, `.pth`,
    `.pt`, `.bin`) weight file into `model` (for a `VertexNet`, pass `net.backbone`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(f"weight file not found: {path}")
    lower = path.lower()
    if lower.endswith(".h5"):
        return keras_weights.load_keras(model, path, load_head=load_head)
    if lower.endswith((".safetensors", ".pth", ".pt", ".bin")):
        return timm_weights.load_timm(model, path, load_head=load_head)
    raise WeightImportError(
        f"{path}: unknown weight file type; expected .h5 / .weights.h5 (Keras) or "
        ".safetensors / .pth / .pt / .bin (timm state dict)")


def build_pretrained(make: Callable[[nnx.Rngs], M], path: str | os.PathLike, *, rngs: nnx.Rngs,
                     backbone: Callable[[M], EfficientNet] = lambda m: m,
                     load_head: bool | None = None) -> tuple[M, ImportReport]:
    """`make(rngs)` with `backbone(model)` loaded from `path`, without paying for the random
    initialisation of what the file provides (a B4 init takes tens of seconds on CPU).

    The model is built abstractly, the file is loaded into it, and only the variables still
    missing (new heads, clinical branch, dropout RNG streams) are initialised, with exactly the
    values `make(rngs)` would give them. Example::

        net, report = build_pretrained(lambda r: VertexNet(variant="b4", rngs=r),
                                       "efficientnetb4_notop.h5", rngs=nnx.Rngs(0),
                                       backbone=lambda n: n.backbone)
    """
    model = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    report = load_pretrained(backbone(model), path, load_head=load_head)
    todo = [(p, v) for p, v in nnx.to_flat_state(nnx.state(model))
            if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
    wanted = {p for p, _ in todo}

    def fresh(rngs: nnx.Rngs) -> dict[str, jax.Array]:
        flat = nnx.to_flat_state(nnx.state(make(rngs)))
        return {"/".join(map(str, p)): v.get_value() for p, v in flat if p in wanted}

    values = nnx.jit(fresh)(rngs)
    for p, variable in todo:
        variable.set_value(values["/".join(map(str, p))])
    return model, report

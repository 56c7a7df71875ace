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

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vertex_jax.models.efficientnet import BlockSpec, EfficientNet

__all__ = [
    "WeightImportError", "ImportReport", "TensorMap", "LAYER_TENSORS",
    "iter_layers", "layer_kind", "expect_ndim", "apply_weights", "load_pretrained", "build_pretrained",
]

M = TypeVar("M", bound=nnx.Module)

# Tensors held by each kind of layer, in our naming.
LAYER_TENSORS = {
    "conv": ("kernel",),
    "dwconv": ("kernel",),
    "bn": ("scale", "bias", "mean", "var"),
    "linear": ("kernel", "bias"),
}
_LIST_LIMIT = 25


class WeightImportError(ValueError):
    """A weight file does not fit the model (missing, unexpected or mis-shaped tensors)."""


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One model tensor and where it comes from in the source file."""

    target: str                                   # e.g. "stages.1.0.dw_conv.kernel"
    variable: nnx.Variable
    source: str                                   # key in the file
    convert: Callable[[np.ndarray], np.ndarray]   # source layout -> our layout
    head: bool = False                            # part of the classifier
    stem: bool = False                            # the stem kernel (colour channels adaptable)


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What `load_pretrained` did."""

    path: str
    format: str
    loaded: int                    # tensors written into the model
    head_loaded: bool
    skipped: tuple[str, ...]       # file tensors deliberately left unused
    stem_summed: bool              # 3-channel stem kernel summed into fewer channels


def layer_kind(module: nnx.Module) -> str:
    """'conv', 'dwconv', 'bn' or 'linear'."""
    if isinstance(module, nnx.Conv):
        return "dwconv" if module.feature_group_count > 1 else "conv"
    if isinstance(module, nnx.BatchNorm):
        return "bn"
    if isinstance(module, nnx.Linear):
        return "linear"
    raise TypeError(f"unexpected layer type {type(module).__name__}")


_BLOCK_ROLES = ("expand_conv", "expand_bn", "dw_conv", "dw_bn", "se_reduce", "se_expand",
                "project_conv", "project_bn")


def iter_layers(model: EfficientNet) -> Iterator[tuple[tuple, nnx.Module, BlockSpec | None]]:
    """(path, layer, block spec or None) for every weight-holding layer, in network order.

    Paths are attribute paths such as ("stem_conv",) or ("stages", 1, 0, "dw_conv").
    """
    yield ("stem_conv",), model.stem_conv, None
    yield ("stem_bn",), model.stem_bn, None
    for s, stage in enumerate(model.stages):
        for j, block in enumerate(stage):
            for role in _BLOCK_ROLES:
                layer = getattr(block, role)
                if layer is not None:
                    yield ("stages", s, j, role), layer, block.spec
    yield ("head_conv",), model.head_conv, None
    yield ("head_bn",), model.head_bn, None
    if model.classifier is not None:
        yield ("classifier",), model.classifier, None


def expect_ndim(a: np.ndarray, *ndims: int) -> np.ndarray:
    """`a` unchanged if it has one of `ndims` dimensions (converters use it to reject odd tensors)."""
    if a.ndim not in ndims:
        raise ValueError(f"expected {' or '.join(map(str, ndims))} dims, got shape {a.shape}")
    return a


def _shape(x) -> tuple[int, ...]:
    return tuple(int(d) for d in np.shape(x))


def _limited(items: list[str]) -> str:
    shown = items[:_LIST_LIMIT]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return "".join(f"\n    {s}" for s in shown) + more


def apply_weights(model: EfficientNet, maps: list[TensorMap], source: Mapping[str, np.ndarray], *,
                  path: str, fmt: str, ignored: Callable[[str], bool],
                  is_head_key: Callable[[str], bool], load_head: bool | None) -> ImportReport:
    """Check `source` against `maps` completely, then write it into the model (all or nothing)."""
    body = [m for m in maps if not m.head]
    head = [m for m in maps if m.head]
    if load_head and not head:
        raise WeightImportError(f"{path}: load_head=True but the model has no classifier (num_classes=None)")
    if load_head is None and head:
        # Load the head only if the file has it with the same shapes (else: fine-tuning a new head).
        try:
            fits = all(m.source in source and
                       _shape(m.convert(np.asarray(source[m.source]))) == _shape(m.variable.get_value())
                       for m in head)
        except ValueError:
            fits = False
        load_head = fits
    active = body + (head if load_head else [])

    missing, misshaped, values = [], [], []
    body_missing = False
    stem_summed = False
    for m in active:
        if m.source not in source:
            missing.append(f"{m.source}  (for {m.target})")
            body_missing |= not m.head
            continue
        raw = np.asarray(source[m.source])
        want = _shape(m.variable.get_value())
        try:
            value = m.convert(raw)
        except ValueError:
            value = None
        if value is not None and m.stem and value.ndim == 4 and value.shape[2] != want[2] and want[2] == 1:
            value = value.sum(axis=2, keepdims=True)
            stem_summed = True
        if value is None or _shape(value) != want:
            got = "unconvertible" if value is None else str(_shape(value))
            misshaped.append(f"{m.source}: file {_shape(raw)} -> {got}, model {m.target} expects {want}")
            continue
        values.append((m.variable, value))

    used = {m.source for m in active}
    skipped = sorted(k for k in source if k not in used and (ignored(k) or is_head_key(k)))
    unexpected = sorted(k for k in source if k not in used and k not in skipped)
    if missing or unexpected or misshaped:
        parts = [f"cannot import {path} ({fmt}) into EfficientNet-{model.variant} "
                 f"(in_channels={model.in_channels}, num_classes={model.num_classes}):"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                parts.append(f"  {label} ({len(items)}):{_limited(items)}")
        if body_missing or any(not is_head_key(k) for k in unexpected):
            parts.append(f"  (does the file hold EfficientNet-{model.variant} weights?)")
        raise WeightImportError("\n".join(parts))

    for variable, value in values:
        variable.set_value(jnp.asarray(value, dtype=variable.get_value().dtype))
    return ImportReport(path=path, format=fmt, loaded=len(values), head_loaded=bool(load_head),
                        skipped=tuple(skipped), stem_summed=stem_summed)


def load_pretrained(model: EfficientNet, path: str | os.PathLike, *,
                    load_head: bool | None = None) -> ImportReport:
    """Load a Keras (`.h5`, `.weights.h5`) or timm `tf_efficientnet_b*` (`.safetensors`, `.pth`,
    `.pt`, `.bin`) weight file into `model` (for a `VertexNet`, pass `net.backbone`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    lower = path.lower()
    if lower.endswith(".h5"):
        from vertex_jax.models import keras_weights
        return keras_weights.load_keras(model, path, load_head=load_head)
    if lower.endswith((".safetensors", ".pth", ".pt", ".bin")):
        from vertex_jax.models import timm_weights
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

"""What weight import needs from both file formats: the model's weight-holding layers in
network order, where each tensor comes from (:class:`TensorMap`), and the all-or-nothing
check-then-write of a source's tensors into the model (:func:`apply_weights`).

``keras_weights`` and ``timm_weights`` describe their file's naming with these;
``weights.load_pretrained`` picks one of them by file type.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from vertex_jax.models.efficientnet import BlockSpec, EfficientNet
from vertex_jax.errors import UserError

__all__ = [
    "WeightImportError", "ImportReport", "TensorMap", "LAYER_TENSORS",
    "iter_layers", "layer_kind", "expect_ndim", "WeightFormat", "apply_weights",
]

# Tensors held by each kind of layer, in our naming.
LAYER_TENSORS = {
    "conv": ("kernel",),
    "dwconv": ("kernel",),
    "bn": ("scale", "bias", "mean", "var"),
    "linear": ("kernel", "bias"),
}
_LIST_LIMIT = 25


class WeightImportError(UserError, ValueError):
    """A weight file does not fit the model (missing, unexpected or mis-shaped tensors)."""

    todo = ("check --config.model.init_weights (a Keras .h5 or timm .safetensors file of the same "
            "EfficientNet variant)")


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


Converter = Callable[[np.ndarray], np.ndarray]


def _vector(a: np.ndarray) -> np.ndarray:
    return expect_ndim(a, 1)


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    """How one kind of weight file names and lays out the network's tensors; the formats
    (``keras_weights.KERAS``, ``timm_weights.TIMM``) differ only in these."""

    name: str
    top_level: Mapping[str, str]                     # our stem/head layer -> the file's layer name
    block_layer: Callable[[BlockSpec, str], str]     # (block, role such as "dw_conv") -> layer name
    tensor_key: Callable[[str, str], str]            # (layer kind, tensor) -> suffix of the layer name
    # (layer kind, tensor) -> conversion from the file's layout to ours; the rest are vectors
    layouts: Mapping[tuple[str, str], Converter]
    ignored: Callable[[str], bool]                   # file keys deliberately left unused
    is_head_key: Callable[[str], bool]               # file keys of the classifier

    def layer_name(self, path: tuple, spec: BlockSpec | None) -> str:
        """The file's name for one of our layers (``path``, ``spec`` as :func:`iter_layers` gives)."""
        return self.top_level[path[0]] if spec is None else self.block_layer(spec, path[-1])

    def tensor_maps(self, model: EfficientNet) -> list[TensorMap]:
        """Every tensor of every layer of ``model`` (see :func:`iter_layers`) and where it
        comes from in a file of this format."""
        maps = []
        for path, layer, spec in iter_layers(model):
            kind = layer_kind(layer)
            for tensor in LAYER_TENSORS[kind]:
                maps.append(TensorMap(
                    target=".".join(map(str, path + (tensor,))), variable=getattr(layer, tensor),
                    source=self.layer_name(path, spec) + self.tensor_key(kind, tensor),
                    convert=self.layouts.get((kind, tensor), _vector),
                    head=path == ("classifier",), stem=path == ("stem_conv",)))
        return maps

    def load(self, model: EfficientNet, tensors: Mapping[str, np.ndarray], *, path: str,
             load_head: bool | None) -> ImportReport:
        """Write ``tensors`` (read from the file at ``path``) into ``model``, all or nothing."""
        return apply_weights(model, self.tensor_maps(model), tensors, path=path, fmt=self.name,
                             ignored=self.ignored, is_head_key=self.is_head_key, load_head=load_head)


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

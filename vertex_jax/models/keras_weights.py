"""Keras `keras.applications.EfficientNetB*` weight files -> `EfficientNet`.

Reads both layouts without Keras itself (h5py only):
- Keras 3 `.weights.h5` (`model.save_weights`): groups `.../vars` carrying the layer name in
  their `name` attribute, datasets `0, 1, ...` in the layer's weight order;
- legacy HDF5 (`efficientnetb4.h5` / `_notop.h5` ImageNet files, or `model.save("x.h5")`):
  `layer_names` / `weight_names` attributes.
Tensors are keyed `"<layer name>/<weight index>"`, e.g. `"block2a_bn/2"` (moving mean).
"""

from __future__ import annotations

import re

import numpy as np

from vertex_jax.models.efficientnet import EfficientNet
from vertex_jax.models.weights import (
    LAYER_TENSORS, ImportReport, TensorMap, WeightImportError, apply_weights, expect_ndim, iter_layers,
    layer_kind,
)

__all__ = ["read_keras_h5", "keras_layer_name", "keras_tensor_maps", "load_keras"]

_TOP_LEVEL = {"stem_conv": "stem_conv", "stem_bn": "stem_bn", "head_conv": "top_conv",
              "head_bn": "top_bn", "classifier": "predictions"}
_BLOCK_LAYERS = {"expand_conv": "expand_conv", "expand_bn": "expand_bn", "dw_conv": "dwconv",
                 "dw_bn": "bn", "se_reduce": "se_reduce", "se_expand": "se_expand",
                 "project_conv": "project_conv", "project_bn": "project_bn"}
# Keras' input `Normalization` layer (auto-named, e.g. "normalization_1" when several models exist).
_INPUT_NORMALIZATION = re.compile(r"normalization(_\d+)?/\d+$")
# Our tensor name -> index in the Keras layer's weight list.
_WEIGHT_INDEX = {"conv": {"kernel": 0}, "dwconv": {"kernel": 0}, "linear": {"kernel": 0, "bias": 1},
                 "bn": {"scale": 0, "bias": 1, "mean": 2, "var": 3}}  # gamma, beta, moving mean/var


def read_keras_h5(path: str) -> dict[str, np.ndarray]:
    """All weights in a Keras HDF5 file as {"layer/index": array}."""
    import h5py

    out: dict[str, np.ndarray] = {}

    def add(layer: str, arrays: list) -> None:
        if any(k.startswith(f"{layer}/") for k in out):
            raise WeightImportError(f"{path}: layer name {layer!r} occurs twice")
        for i, a in enumerate(arrays):
            out[f"{layer}/{i}"] = np.asarray(a)

    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:  # legacy layout
            for name in root.attrs["layer_names"]:
                name = name.decode() if isinstance(name, bytes) else str(name)
                group = root[name]
                names = [n.decode() if isinstance(n, bytes) else str(n)
                         for n in group.attrs.get("weight_names", [])]
                add(name, [group[n][()] for n in names])
        elif "layers" in root:  # Keras 3 .weights.h5
            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Group) and name.endswith("vars") and len(obj):
                    if "name" not in obj.attrs:
                        raise WeightImportError(
                            f"{path}: group {name!r} has no layer name attribute; re-save the model with a "
                            "recent Keras or in the legacy .h5 format")
                    keys = sorted(obj.keys(), key=int)
                    add(str(obj.attrs["name"]), [obj[k][()] for k in keys])
            root.visititems(visit)
        else:
            raise WeightImportError(f"{path}: not a Keras weight file (no 'layer_names' or 'layers')")
    if not out:
        raise WeightImportError(f"{path}: the file holds no weights")
    return out


def keras_layer_name(path: tuple) -> str:
    """Keras layer name for one of our layer paths (see `iter_layers`)."""
    if len(path) == 1:
        return _TOP_LEVEL[path[0]]
    _, s, j, role = path
    return f"block{s + 1}{chr(ord('a') + j)}_{_BLOCK_LAYERS[role]}"


def _convert(kind: str, tensor: str):
    if kind == "dwconv":  # [k, k, C, 1] -> [k, k, 1, C]
        return lambda a: expect_ndim(a, 4).transpose(0, 1, 3, 2)
    if kind == "linear" and tensor == "kernel":  # SE 1x1 conv [1, 1, I, O] or Dense [I, O] -> [I, O]
        return lambda a: expect_ndim(a, 2, 4).reshape(a.shape[-2:])
    if kind == "conv":
        return lambda a: expect_ndim(a, 4)
    return lambda a: expect_ndim(a, 1)


def keras_tensor_maps(model: EfficientNet) -> list[TensorMap]:
    """Where each model tensor lives in a Keras EfficientNet weight file."""
    maps = []
    for path, layer, _ in iter_layers(model):
        kind, name = layer_kind(layer), keras_layer_name(path)
        for tensor in LAYER_TENSORS[kind]:
            maps.append(TensorMap(
                target=".".join(map(str, path + (tensor,))), variable=getattr(layer, tensor),
                source=f"{name}/{_WEIGHT_INDEX[kind][tensor]}", convert=_convert(kind, tensor),
                head=path == ("classifier",), stem=path == ("stem_conv",)))
    return maps


def load_keras(model: EfficientNet, path: str, *, load_head: bool | None = None) -> ImportReport:
    """Load a Keras EfficientNet `.h5` / `.weights.h5` file into `model` (see `weights`)."""
    return apply_weights(model, keras_tensor_maps(model), read_keras_h5(path), path=path, fmt="keras",
                         ignored=lambda k: _INPUT_NORMALIZATION.match(k) is not None,
                         is_head_key=lambda k: k.startswith("predictions/"), load_head=load_head)

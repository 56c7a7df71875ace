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

from vertex_jax.models.efficientnet import BlockSpec, EfficientNet
from vertex_jax.models.weight_maps import ImportReport, TensorMap, WeightFormat, WeightImportError, expect_ndim

__all__ = ["KERAS", "read_keras_h5", "keras_tensor_maps", "load_keras"]

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


def _block_layer(spec: BlockSpec, role: str) -> str:
    return f"block{spec.stage + 1}{chr(ord('a') + spec.index)}_{_BLOCK_LAYERS[role]}"


# Keras layout -> ours for the tensors that are not vectors.
_LAYOUTS = {
    ("conv", "kernel"): lambda a: expect_ndim(a, 4),
    ("dwconv", "kernel"): lambda a: expect_ndim(a, 4).transpose(0, 1, 3, 2),  # [k, k, C, 1] -> [k, k, 1, C]
    # SE 1x1 conv [1, 1, I, O] or Dense [I, O] -> [I, O]
    ("linear", "kernel"): lambda a: expect_ndim(a, 2, 4).reshape(a.shape[-2:]),
}

KERAS = WeightFormat("keras", top_level=_TOP_LEVEL, block_layer=_block_layer,
                     tensor_key=lambda kind, tensor: f"/{_WEIGHT_INDEX[kind][tensor]}", layouts=_LAYOUTS,
                     ignored=lambda k: _INPUT_NORMALIZATION.match(k) is not None,
                     is_head_key=lambda k: k.startswith("predictions/"))


def keras_tensor_maps(model: EfficientNet) -> list[TensorMap]:
    """Where each model tensor lives in a Keras EfficientNet weight file."""
    return KERAS.tensor_maps(model)


def load_keras(model: EfficientNet, path: str, *, load_head: bool | None = None) -> ImportReport:
    """Load a Keras EfficientNet `.h5` / `.weights.h5` file into `model` (see `vertex_jax.models.weights`)."""
    return KERAS.load(model, read_keras_h5(path), path=path, load_head=load_head)

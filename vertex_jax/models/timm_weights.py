"""timm `tf_efficientnet_b*` state dicts (`.safetensors`, `.pth`) -> `EfficientNet`.

`.safetensors` is read with `safetensors.numpy` (no torch needed); `.pth` / `.pt` / `.bin` need
torch and are opened with `weights_only=True`. A checkpoint wrapping the state dict under
"state_dict" or "model" and DataParallel "module." prefixes are accepted.
Only the `tf_` variants match this network numerically (TF "SAME" padding, BN epsilon 1e-3);
plain timm `efficientnet_b*` weights have the same names and shapes but were trained with
symmetric padding, so they load but do not reproduce timm's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vertex_jax.models.efficientnet import BlockSpec, EfficientNet
from vertex_jax.models.weight_maps import ImportReport, TensorMap, WeightFormat, WeightImportError, expect_ndim

__all__ = ["TIMM", "read_state_dict", "timm_tensor_maps", "load_timm"]

_TOP_LEVEL = {"stem_conv": "conv_stem", "stem_bn": "bn1", "head_conv": "conv_head",
              "head_bn": "bn2", "classifier": "classifier"}
# Depthwise-separable blocks (expand ratio 1) and inverted-residual blocks name their layers differently.
_DS_BLOCK = {"dw_conv": "conv_dw", "dw_bn": "bn1", "se_reduce": "se.conv_reduce",
             "se_expand": "se.conv_expand", "project_conv": "conv_pw", "project_bn": "bn2"}
_IR_BLOCK = {"expand_conv": "conv_pw", "expand_bn": "bn1", "dw_conv": "conv_dw", "dw_bn": "bn2",
             "se_reduce": "se.conv_reduce", "se_expand": "se.conv_expand",
             "project_conv": "conv_pwl", "project_bn": "bn3"}
_TENSOR = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean",
           "var": "running_var"}


def _from_torch(obj, path: str) -> dict[str, np.ndarray]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightImportError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not hasattr(v, "detach"):
            raise WeightImportError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k.removeprefix("module.")] = v.detach().cpu().float().numpy() if v.is_floating_point() \
            else v.detach().cpu().numpy()
    return out


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A timm state dict as {name: numpy array}."""
    if path.lower().endswith(".safetensors"):
        from safetensors.numpy import load_file
        return dict(load_file(path))
    try:
        import torch
    except ImportError:
        raise WeightImportError(
            f"{path}: reading a PyTorch checkpoint needs torch; install it or convert the file to "
            ".safetensors (safetensors.torch.save_file(state_dict, 'x.safetensors'))") from None
    return _from_torch(torch.load(path, map_location="cpu", weights_only=True), path)


def _block_layer(spec: BlockSpec, role: str) -> str:
    return f"blocks.{spec.stage}.{spec.index}.{(_DS_BLOCK if spec.expand == 1 else _IR_BLOCK)[role]}"


# PyTorch layout -> ours for the tensors that are not vectors.
_LAYOUTS = {
    ("conv", "kernel"): lambda a: expect_ndim(a, 4).transpose(2, 3, 1, 0),  # [O, I, kh, kw] -> [kh, kw, I, O]
    ("dwconv", "kernel"): lambda a: expect_ndim(a, 4).transpose(2, 3, 1, 0),
    # SE 1x1 conv [O, I, 1, 1] or Linear [O, I] -> [I, O]
    ("linear", "kernel"): lambda a: expect_ndim(a, 2, 4).reshape(a.shape[:2]).T,
}

TIMM = WeightFormat("timm", top_level=_TOP_LEVEL, block_layer=_block_layer,
                    tensor_key=lambda kind, tensor: f".{_TENSOR[tensor]}", layouts=_LAYOUTS,
                    ignored=lambda k: k.endswith(".num_batches_tracked"),
                    is_head_key=lambda k: k.startswith("classifier."))


def timm_tensor_maps(model: EfficientNet) -> list[TensorMap]:
    """Where each model tensor lives in a timm `tf_efficientnet` state dict."""
    return TIMM.tensor_maps(model)


def load_timm(model: EfficientNet, path: str, *, load_head: bool | None = None) -> ImportReport:
    """Load a timm `tf_efficientnet_b*` state dict into `model` (see `vertex_jax.models.weights`)."""
    return TIMM.load(model, read_state_dict(path), path=path, load_head=load_head)

"""The convolutions of EfficientNet's layers, NHWC, each in the forms the levers choose.

Strided convolutions pad as TF "SAME" (the Keras/timm weights) or symmetrically
(:func:`conv_padding`); depthwise convolutions run as XLA's grouped convolution or as
shifted multiply-adds (:class:`DepthwiseConv`); 1x1 convolutions as XLA convolutions or
matrix products over the channels (:class:`PointwiseConv`). Each form is the same
function with the same variables, so weights and checkpoints are shared between them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from vertex_jax.auto_setting import on_accelerator
from vertex_jax.errors import ConfigError

__all__ = ["CONV_INIT", "DEPTHWISE_IMPLS", "PADDINGS", "POINTWISE_IMPLS", "conv_padding", "depthwise_shifts",
           "KernelConv", "DepthwiseConv", "PointwiseConv", "standard_conv", "set_pointwise_impl"]

CONV_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
# Depthwise kernels are [k, k, 1, C]; the TF reference takes fan-out as k*k (one output per channel).
_dw_init = jax.nn.initializers.variance_scaling(
    2.0, "fan_out", "truncated_normal", in_axis=-1, out_axis=-2)


DEPTHWISE_IMPLS = ("auto", "conv", "shifts")
PADDINGS = ("tf", "symmetric")


def _tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv_padding(kernel: int, padding: str) -> str | tuple[tuple[int, int], tuple[int, int]]:
    """The ``nnx.Conv`` padding of a ``kernel``-sized convolution under ``padding``:
    ``tf`` is TF "SAME" (for stride 2 on even sizes one more row/column after than
    before, as the Keras/timm weights were trained), ``symmetric`` is (k-1)/2 on every
    side (PyTorch's; the same output size for odd kernels, no explicit pad before
    strided convolutions on GPUs). The two differ only for strided convolutions."""
    if padding not in PADDINGS:
        raise ConfigError(f"model.padding must be one of {PADDINGS}, got {padding!r}")
    if padding == "tf":
        return "SAME"
    p = (kernel - 1) // 2
    return ((p, p), (p, p))


def depthwise_shifts(x: jax.Array, kernel: jax.Array, stride: int, padding: str = "tf") -> jax.Array:
    """Depthwise convolution (:func:`conv_padding`'s ``padding``) as k*k shifted, strided
    multiply-adds.

    The same function as ``conv_general_dilated(..., feature_group_count=C)`` with
    ``kernel`` [k, k, 1, C]; XLA fuses it into elementwise loops, which on CPU trains
    several times faster than its grouped-convolution kernels (see ``vertex_jax.bench``).
    """
    k = kernel.shape[0]
    _, h, w, _ = x.shape
    if padding == "tf":
        (top, bottom), (left, right) = _tf_same_pad(h, k, stride), _tf_same_pad(w, k, stride)
    else:
        (top, bottom), (left, right) = conv_padding(k, padding)
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    oh, ow = -(-h // stride), -(-w // stride)
    out = None
    for i in range(k):
        for j in range(k):
            tap = xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride]
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


class KernelConv(nnx.Conv):
    """``nnx.Conv`` (NHWC, same variables) that can also run with another kernel in place of
    its own (:meth:`with_kernel`): a BatchNorm folded into it in evaluation, say."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.with_kernel(x, self.kernel[...])

    @property
    def stride_pair(self) -> tuple[int, int]:
        """The strides as (height, width), however they were given."""
        return tuple(self.strides) if isinstance(self.strides, tuple) else (self.strides,) * 2

    def with_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        """The layer on NHWC ``x`` with ``kernel`` (HWIO, its own shape) in place of its own."""
        return jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), self.stride_pair,
                                            self.padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=self.feature_group_count)


class DepthwiseConv(KernelConv):
    """Depthwise ``nnx.Conv`` (same kernel variable, so weights and checkpoints are shared)
    computed by ``impl``: ``conv`` (XLA grouped convolution), ``shifts``
    (:func:`depthwise_shifts`) or ``auto`` (shifts on CPU, conv on accelerators)."""

    def __init__(self, channels: int, kernel: int, *, stride: int, impl: str, dtype: Any,
                 rngs: nnx.Rngs, padding: str = "tf"):
        if impl not in DEPTHWISE_IMPLS:
            raise ConfigError(f"depthwise impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
        super().__init__(channels, channels, (kernel, kernel), strides=stride,
                         padding=conv_padding(kernel, padding),
                         feature_group_count=channels, use_bias=False, kernel_init=_dw_init,
                         dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.impl = impl
        self.padding_mode = padding

    def with_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        impl = self.impl
        if impl == "auto":
            impl = "conv" if on_accelerator() else "shifts"
        if impl == "conv":
            return super().with_kernel(x, kernel)
        return depthwise_shifts(x.astype(self.dtype), kernel.astype(self.dtype), self.stride_pair[0],
                                self.padding_mode)


def standard_conv(cin: int, cout: int, kernel: int, *, stride: int = 1, dtype: Any, rngs: nnx.Rngs,
                  padding: str = "tf") -> KernelConv:
    """A ``kernel``-sized convolution without bias, the TF reference's initialisation,
    float32 parameters and :func:`conv_padding`'s ``padding``."""
    return KernelConv(cin, cout, (kernel, kernel), strides=stride, padding=conv_padding(kernel, padding),
                      use_bias=False, kernel_init=CONV_INIT, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


POINTWISE_IMPLS = ("conv", "dot")


class PointwiseConv(KernelConv):
    """1x1 ``nnx.Conv`` (same kernel variable, so weights and checkpoints are shared)
    computed as ``impl`` says (:data:`POINTWISE_IMPLS`, set for a whole network by
    :func:`set_pointwise_impl`): ``conv``, an XLA convolution (cuDNN on GPUs), or ``dot``, a
    matrix product over the channels (cuBLAS on GPUs, whose autotuning
    ``--xla_gpu_autotune_max_solutions`` bounds; XLA cannot bound cuDNN's). The same
    function: each output is a sum of the same ``cin`` products."""

    def __init__(self, cin: int, cout: int, *, dtype: Any, rngs: nnx.Rngs):
        super().__init__(cin, cout, (1, 1), use_bias=False, kernel_init=CONV_INIT, dtype=dtype,
                         param_dtype=jnp.float32, rngs=rngs)
        self.impl = "conv"

    def with_kernel(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        if self.impl == "conv":
            return super().with_kernel(x, kernel)
        return jnp.einsum("...c,cd->...d", x.astype(self.dtype), kernel[0, 0].astype(self.dtype))


def set_pointwise_impl(module: nnx.Module, impl: str) -> None:
    """Compute every 1x1 convolution of the backbones in ``module`` as ``impl``
    (:data:`POINTWISE_IMPLS`, :class:`PointwiseConv`)."""
    if impl not in POINTWISE_IMPLS:
        raise ConfigError(f"model.pointwise must be one of {POINTWISE_IMPLS}, got {impl!r}")
    for conv in (m for _, m in nnx.iter_modules(module) if isinstance(m, PointwiseConv)):
        conv.impl = impl

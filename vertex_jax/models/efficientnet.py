"""EfficientNet B0-B7 in Flax NNX (NHWC), built from the TF reference compound-scaling rules.

Numerically it follows `keras.applications.EfficientNetB*` and timm's `tf_efficientnet_b*`:
TF "SAME" padding (asymmetric for stride 2 on even sizes), BatchNorm momentum 0.99 and
epsilon 1e-3, squeeze-excitation sized from the block's *input* channels, swish, and
drop-connect rising linearly from 0 to 0.2 over the blocks. Imported weights therefore give
the same numbers (see `vertex_jax.models.weights`).

Parameters are float32; `dtype` sets the compute dtype of convolutions and activations
(bfloat16 on GPU). BatchNorm normalises and keeps its statistics in float32, and the pooled
features and logits are float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from vertex_jax.auto_setting import on_accelerator
from vertex_jax.errors import ConfigError

__all__ = [
    "VARIANTS", "Variant", "BlockSpec", "block_specs", "round_filters", "round_repeats",
    "BatchNorm", "MBConv", "EfficientNet", "to_unit_float", "normalize_input", "IMAGENET_MEAN",
    "IMAGENET_STD", "HEAD", "BATCHNORM_IMPLS", "PADDINGS", "conv_padding", "fused_batch_norm",
    "set_bn_impl", "RECOMPUTE",
]


@dataclasses.dataclass(frozen=True)
class Variant:
    """Compound-scaling coefficients of one EfficientNet variant."""

    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, Variant] = {
    "b0": Variant(1.0, 1.0, 224, 0.2),
    "b1": Variant(1.0, 1.1, 240, 0.2),
    "b2": Variant(1.1, 1.2, 260, 0.3),
    "b3": Variant(1.2, 1.4, 300, 0.3),
    "b4": Variant(1.4, 1.8, 380, 0.4),
    "b5": Variant(1.6, 2.2, 456, 0.4),
    "b6": Variant(1.8, 2.6, 528, 0.5),
    "b7": Variant(2.0, 3.1, 600, 0.5),
    # Not a published variant: the same rules scaled down (7 blocks, 320 head channels)
    # so CPU tests and smoke runs compile in seconds.
    "tiny": Variant(0.25, 0.25, 64, 0.1),
}

# B0 stages: (expand ratio, kernel, stride, input channels, output channels, repeats).
_BASE_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
SE_RATIO = 0.25
DROP_CONNECT_RATE = 0.2
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
HEAD = "head"  # name of the head convolution's output among the feature taps

# ImageNet normalisation used by the Keras and timm `tf_` weights, applied to [0, 1] inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")
# Depthwise kernels are [k, k, 1, C]; the TF reference takes fan-out as k*k (one output per channel).
_dw_init = jax.nn.initializers.variance_scaling(
    2.0, "fan_out", "truncated_normal", in_axis=-1, out_axis=-2)
_dense_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, rounded to a multiple of `divisor` (never down by >10%)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by `depth`, rounding up."""
    return int(math.ceil(depth * repeats))


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Static description of one MBConv block."""

    stage: int
    index: int          # position within the stage
    expand: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    drop_rate: float    # drop-connect probability

    @property
    def hidden(self) -> int:
        return self.in_channels * self.expand

    @property
    def se_channels(self) -> int:
        return max(1, int(self.in_channels * SE_RATIO))

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def _variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown EfficientNet variant {name!r}; expected one of {sorted(VARIANTS)}") from None


def block_specs(variant: str) -> tuple[tuple[BlockSpec, ...], ...]:
    """Per-stage block specifications of `variant` ('b0'..'b7')."""
    v = _variant(variant)
    repeats = [round_repeats(r, v.depth) for *_, r in _BASE_STAGES]
    total, count = sum(repeats), 0
    stages = []
    for s, ((expand, kernel, stride, cin, cout, _), n) in enumerate(zip(_BASE_STAGES, repeats)):
        cin, cout = round_filters(cin, v.width), round_filters(cout, v.width)
        blocks = []
        for j in range(n):
            blocks.append(BlockSpec(
                stage=s, index=j, expand=expand, kernel=kernel, stride=stride if j == 0 else 1,
                in_channels=cin if j == 0 else cout, out_channels=cout,
                drop_rate=DROP_CONNECT_RATE * count / total))
            count += 1
        stages.append(tuple(blocks))
    return tuple(stages)


def to_unit_float(image: jax.Array) -> jax.Array:
    """Integer canvases (uint8 / uint16, full range) to float32 in [0, 1]; floats pass
    through as float32. The one scaling of stored pixels, for training and every export."""
    if jnp.issubdtype(image.dtype, jnp.integer):
        return image.astype(jnp.float32) / float(jnp.iinfo(image.dtype).max)
    return image.astype(jnp.float32)


def normalize_input(image: jax.Array) -> jax.Array:
    """Map an NHWC image (uint8/uint16 full range, or float 0..1) to the network's input
    scale, float32.

    Three channels get the ImageNet per-channel mean/std. Any other channel count (1 for grey
    radiographs) gets the channel-averaged constants (mean 0.449, std 0.226) on every channel,
    so a grey image through a 1-channel stem (3-channel kernel summed over colours) gives exactly
    what the 3-channel network gives on that image replicated to RGB.
    """
    x = to_unit_float(image)
    if image.shape[-1] == 3:
        mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)
    else:
        mean, std = sum(IMAGENET_MEAN) / 3.0, sum(IMAGENET_STD) / 3.0
    return (x - mean) / std


# What a block keeps for its backward pass under ``recompute="elementwise"``: convolution
# outputs, BatchNorm statistics and the squeeze-excitation pool and gate (per-channel).
# BatchNorm + swish outputs and the gated projection input (about half of the saved bytes,
# docs/performance-notes.md §8) are recomputed from them, elementwise, in the backward pass.
_KEPT_CONV, _KEPT_STATS, _KEPT_GATE = "conv", "bn_stats", "se_gate"
RECOMPUTE = ("none", "elementwise")


def _channel_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel sums of ``a`` and ``b`` (same shape) over all but the last axis.

    On accelerators one two-operand reduction: XLA:GPU splits a long reduction into two
    kernels, and two ``jnp.sum`` calls share only the first (192 kernels fewer in the B4
    step, docs/performance-notes.md §12). XLA:CPU runs a two-operand reduction as a
    scalar loop (~6x slower), so CPUs keep two sums.
    """
    axes = tuple(range(a.ndim - 1))
    if not on_accelerator():
        return jnp.sum(a, axis=axes), jnp.sum(b, axis=axes)
    zero = np.zeros((), a.dtype)
    return jax.lax.reduce((a, b), (zero, zero), lambda p, q: (p[0] + q[0], p[1] + q[1]), axes)


def _stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    xf = x.astype(jnp.float32)
    n = x.size // x.shape[-1]
    total, squares = _channel_sums(xf, jnp.square(xf))
    mean = total / n
    return mean, jnp.maximum(squares / n - jnp.square(mean), 0.0)


@jax.custom_vjp
def _batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel mean and biased variance over all but the last axis, in float32.

    Custom VJP: the backward pass needs only `x` and the mean (no float32 copy of `x`, no
    recomputed reduction).
    """
    return _stats(x)


def _batch_stats_fwd(x):
    mean, var = _stats(x)
    # named: a recomputing policy keeps the residual too, not only the returned mean
    return (mean, var), (x, checkpoint_name(mean, _KEPT_STATS))


def _batch_stats_bwd(residuals, cotangents):
    x, mean = residuals
    g_mean, g_var = cotangents
    n = x.size // x.shape[-1]
    dx = (g_mean + 2.0 * g_var * (x.astype(jnp.float32) - mean)) / n
    return (dx.astype(x.dtype),)


_batch_stats.defvjp(_batch_stats_fwd, _batch_stats_bwd)


def _normalize_act_plain(x, scale, bias, mean, var, epsilon: float, act: bool, dtype) -> jax.Array:
    """(x - mean) * scale / sqrt(var + eps) + bias, optional swish, computed in float32."""
    y = (x.astype(jnp.float32) - mean) * (scale * jax.lax.rsqrt(var + epsilon)) + bias
    return (jax.nn.silu(y) if act else y).astype(dtype)


# Rematerialised: the backward pass keeps the compute-dtype input, not float32 temporaries.
# Inside a block under recompute="elementwise" the plain form is used: the block's own
# policy recomputes it, and an inner checkpoint's output would be kept by that policy.
_normalize_act = functools.partial(jax.checkpoint, static_argnums=(5, 6, 7))(_normalize_act_plain)


def _named(stats: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Batch statistics named so that ``recompute="elementwise"`` keeps them."""
    return tuple(checkpoint_name(v, _KEPT_STATS) for v in stats)  # type: ignore[return-value]


def fused_batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, act: bool,
                     dtype: Any, grad: str = "float32") -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode BatchNorm (+ optional swish) with a hand-written backward pass:
    ``(y, batch mean, biased batch variance)``, statistics in float32.

    The same function as :func:`_batch_stats` + :func:`_normalize_act`. Its backward pass
    reads ``x`` and the output cotangent twice in all: one fused reduction for
    ``sum(dz)`` and ``sum(dz * x_hat)`` (the bias and scale gradients), one elementwise
    pass for ``dx = scale * rstd * (dz - mean(dz) - x_hat * mean(dz * x_hat))``, where
    autodiff of the two-part form emits a reduction for each of scale, bias, mean and
    variance. Residuals: ``x`` in its own dtype and per-channel vectors.

    The statistics are computed apart from the normalisation, so a recomputing policy can
    keep them and redo only the elementwise part; the backward pass of the normalisation
    carries their share of ``x``'s gradient, so the returned statistics carry none
    (BatchNorm only averages them into its running statistics).

    ``grad`` (:data:`BATCHNORM_GRADS`): with ``"compute"``, the backward pass rounds the
    swish's cotangent ``dz`` to the output cotangent's dtype (bfloat16 under mixed
    precision) before its two passes read it, as a framework that differentiates op by
    op does; ``"float32"`` keeps it in float32 (XLA writes it out in float32 between the
    passes: on the B4 step, 25 of some 240 GB per step, docs/performance-notes.md §12).
    """
    if grad not in BATCHNORM_GRADS:
        raise ConfigError(f"model.batchnorm_grad must be one of {BATCHNORM_GRADS}, got {grad!r}")
    mean, var = _named(_stats(jax.lax.stop_gradient(x)))
    return _normalize_act_fused(x, scale, bias, mean, var, epsilon, act, dtype, grad), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _normalize_act_fused(x, scale, bias, mean, var, epsilon: float, act: bool, dtype,
                         grad: str) -> jax.Array:
    """:func:`_normalize_act_plain` for ``mean, var`` = the batch statistics of ``x``: its
    backward pass gives ``x`` the whole BatchNorm gradient (through the statistics too) and
    ``mean``, ``var`` none, so it is right only as :func:`fused_batch_norm` calls it."""
    return _normalize_act_plain(x, scale, bias, mean, var, epsilon, act, dtype)


def _normalize_act_fused_fwd(x, scale, bias, mean, var, epsilon, act, dtype, grad):
    return _normalize_act_plain(x, scale, bias, mean, var, epsilon, act, dtype), (x, scale, bias, mean, var)


def _normalize_act_fused_bwd(epsilon, act, dtype, grad, residuals, g_y):
    x, scale, bias, mean, var = residuals
    n = x.size // x.shape[-1]
    rstd = jax.lax.rsqrt(var + epsilon)
    x_hat = (x.astype(jnp.float32) - mean) * rstd
    dz = g_y.astype(jnp.float32)
    if act:  # d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z)
        z = x_hat * scale + bias
        s = jax.nn.sigmoid(z)
        dz = dz * (s * (1.0 + z * (1.0 - s)))
        if grad == "compute" and g_y.dtype != jnp.float32:
            # The barrier keeps XLA (excess precision allowed) from folding the round trip away.
            dz = jax.lax.optimization_barrier(dz.astype(g_y.dtype)).astype(jnp.float32)
    sum_dz, sum_dz_xhat = _channel_sums(dz, dz * x_hat)
    dx = (scale * rstd) * (dz - sum_dz / n - x_hat * (sum_dz_xhat / n))
    return dx.astype(x.dtype), sum_dz_xhat, sum_dz, jnp.zeros_like(mean), jnp.zeros_like(var)


_normalize_act_fused.defvjp(_normalize_act_fused_fwd, _normalize_act_fused_bwd)

BATCHNORM_IMPLS = ("auto", "autodiff", "fused")
BATCHNORM_GRADS = ("float32", "compute")  # the fused backward pass's swish cotangent


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` (same variables, train/eval switch) with the TF reference settings
    (momentum 0.99, epsilon 1e-3), float32 statistics, an optional fused swish and output in
    the compute dtype.

    Training mode has two implementations of one function (``impl``, set for a whole
    network by :func:`set_bn_impl`): ``fused`` (:func:`fused_batch_norm`, a hand-written
    backward pass) and ``autodiff`` (batch statistics with a custom VJP, normalisation
    rematerialised by ``jax.checkpoint``, or plain inside a block that
    ``recompute="elementwise"`` recomputes); ``auto`` is fused on accelerators (8% faster
    training on an H200) and autodiff on CPUs (where fused is ~25% slower). Both keep only the compute-dtype input and
    per-channel statistics for the backward pass, not float32 copies of the activation.
    """

    def __init__(self, features: int, *, act: bool, dtype: Any, rngs: nnx.Rngs,
                 impl: str = "auto"):
        super().__init__(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=jnp.float32,
                         param_dtype=jnp.float32, rngs=rngs)
        self.act = act
        self.compute_dtype = dtype
        self.impl = impl
        self.grad = "float32"  # fused only: :data:`BATCHNORM_GRADS`, set by set_bn_impl
        self.in_recomputed_block = False  # set by EfficientNet for recompute="elementwise"

    def __call__(self, x: jax.Array) -> jax.Array:
        scale, bias = self.scale[...], self.bias[...]
        if self.use_running_average:
            return _normalize_act(x, scale, bias, self.mean[...], self.var[...], self.epsilon,
                                  self.act, self.compute_dtype)
        impl = self.impl
        if impl == "auto":
            impl = "fused" if on_accelerator() else "autodiff"
        if impl == "fused":
            y, mean, var = fused_batch_norm(x, scale, bias, self.epsilon, self.act, self.compute_dtype,
                                             self.grad)
        else:
            mean, var = _named(_batch_stats(x))
            normalize = _normalize_act_plain if self.in_recomputed_block else _normalize_act
            y = normalize(x, scale, bias, mean, var, self.epsilon, self.act, self.compute_dtype)
        m = self.momentum
        self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
        self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
        return y


def set_bn_impl(module: nnx.Module, impl: str, grad: str = "float32") -> None:
    """Use BatchNorm implementation ``impl`` (:data:`BATCHNORM_IMPLS`) everywhere in
    ``module``, the fused one keeping its swish cotangent in ``grad`` (:data:`BATCHNORM_GRADS`)."""
    if impl not in BATCHNORM_IMPLS:
        raise ConfigError(f"model.batchnorm must be one of {BATCHNORM_IMPLS}, got {impl!r}")
    if grad not in BATCHNORM_GRADS:
        raise ConfigError(f"model.batchnorm_grad must be one of {BATCHNORM_GRADS}, got {grad!r}")
    for _, m in nnx.iter_modules(module):
        if isinstance(m, BatchNorm):
            m.impl, m.grad = impl, grad


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


class DepthwiseConv(nnx.Conv):
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

    def __call__(self, x: jax.Array) -> jax.Array:
        impl = self.impl
        if impl == "auto":
            impl = "conv" if on_accelerator() else "shifts"
        if impl == "conv":
            return super().__call__(x)
        return depthwise_shifts(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                                self.strides[0] if isinstance(self.strides, tuple) else self.strides,
                                self.padding_mode)


def set_bn_momentum(module: nnx.Module, momentum: float) -> None:
    """Set the running-statistics momentum of every backbone BatchNorm in ``module``.

    The reference 0.99 averages over ~100 steps; short runs (hundreds of steps) evaluate
    with statistics still near their initial values unless it is lowered (e.g. 0.9).
    """
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"BatchNorm momentum must be in [0, 1), got {momentum}")
    for _, m in nnx.iter_modules(module):
        if isinstance(m, BatchNorm):
            m.momentum = momentum


def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, dtype: Any, rngs: nnx.Rngs,
          padding: str = "tf") -> nnx.Conv:
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=conv_padding(kernel, padding),
                    use_bias=False,
                    kernel_init=_conv_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


SE_DENSE_FORMS = ("dot", "reduce")


def se_dense(layer: nnx.Linear, s: jax.Array, form: str) -> jax.Array:
    """A squeeze-excite layer (``layer``, on pooled ``s`` of shape [..., in]) in ``form``:
    ``dot``, the layer itself (a matrix product: a cuBLAS call on GPUs, which XLA autotunes
    once per distinct shape), or ``reduce``, the same products summed in float32 by XLA's
    own reduction kernels (nothing to autotune; docs/performance-notes.md §12). The output
    has the layer's dtype either way."""
    if form == "dot":
        return layer(s)
    if form != "reduce":
        raise ConfigError(f"model.se_dense must be one of {SE_DENSE_FORMS}, got {form!r}")
    products = s.astype(jnp.float32)[..., :, None] * layer.kernel[...]
    return (jnp.sum(products, axis=-2) + layer.bias[...]).astype(layer.dtype)


def set_se_dense(module: nnx.Module, form: str) -> None:
    """Compute every squeeze-excite layer of ``module`` in ``form`` (:func:`se_dense`)."""
    if form not in SE_DENSE_FORMS:
        raise ConfigError(f"model.se_dense must be one of {SE_DENSE_FORMS}, got {form!r}")
    for _, m in nnx.iter_modules(module):
        if isinstance(m, MBConv):
            m.se_dense = form


class MBConv(nnx.Module):
    """Mobile inverted bottleneck: [1x1 expand] -> depthwise -> squeeze-excite -> 1x1 project (+skip)."""

    def __init__(self, spec: BlockSpec, *, dtype: Any = jnp.float32, depthwise: str = "auto",
                 padding: str = "tf", rngs: nnx.Rngs):
        self.spec = spec
        self.dtype = dtype
        hidden = spec.hidden
        if spec.expand != 1:
            self.expand_conv = _conv(spec.in_channels, hidden, 1, dtype=dtype, rngs=rngs)
            self.expand_bn = BatchNorm(hidden, act=True, dtype=dtype, rngs=rngs)
        else:
            self.expand_conv = self.expand_bn = None
        self.dw_conv = DepthwiseConv(hidden, spec.kernel, stride=spec.stride, impl=depthwise,
                                     dtype=dtype, rngs=rngs, padding=padding)
        self.dw_bn = BatchNorm(hidden, act=True, dtype=dtype, rngs=rngs)
        self.se_reduce = nnx.Linear(hidden, spec.se_channels, kernel_init=_conv_init,
                                    dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.se_expand = nnx.Linear(spec.se_channels, hidden, kernel_init=_conv_init,
                                    dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.se_dense = "dot"  # :data:`SE_DENSE_FORMS`, set by set_se_dense
        self.project_conv = _conv(hidden, spec.out_channels, 1, dtype=dtype, rngs=rngs)
        self.project_bn = BatchNorm(spec.out_channels, act=False, dtype=dtype, rngs=rngs)
        if spec.has_skip and spec.drop_rate > 0:
            # Drop-connect: drop the whole residual branch per example, scale survivors.
            self.drop_path = nnx.Dropout(spec.drop_rate, broadcast_dims=(1, 2, 3), rngs=rngs)
        else:
            self.drop_path = None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        if self.expand_conv is not None:
            h = self.expand_bn(checkpoint_name(self.expand_conv(h), _KEPT_CONV))
        h = self.dw_bn(checkpoint_name(self.dw_conv(h), _KEPT_CONV))
        s = checkpoint_name(jnp.mean(h, axis=(1, 2), keepdims=True, dtype=jnp.float32), _KEPT_GATE)
        s = jax.nn.silu(se_dense(self.se_reduce, s, self.se_dense))
        s = checkpoint_name(jax.nn.sigmoid(se_dense(self.se_expand, s, self.se_dense)), _KEPT_GATE)
        h = h * s.astype(self.dtype)
        h = self.project_bn(checkpoint_name(self.project_conv(h), _KEPT_CONV))
        if self.spec.has_skip:
            if self.drop_path is not None:
                h = self.drop_path(h)
            h = h + x
        return h


def _apply_block(block: MBConv, x: jax.Array) -> jax.Array:
    return block(x)


def _block_apply(remat: bool, recompute: str) -> Callable[[MBConv, jax.Array], jax.Array]:
    """How :meth:`EfficientNet.taps` applies a block: plainly, fully rematerialised
    (``remat``) or keeping only what ``recompute="elementwise"`` keeps."""
    if recompute not in RECOMPUTE:
        raise ConfigError(f"model.recompute must be one of {RECOMPUTE}, got {recompute!r}")
    if remat and recompute != "none":
        raise ConfigError("model.remat recomputes the whole block; set model.recompute=none with it")
    if remat:
        return nnx.remat(_apply_block)
    if recompute == "elementwise":
        return nnx.remat(_apply_block, policy=jax.checkpoint_policies.save_only_these_names(
            _KEPT_CONV, _KEPT_STATS, _KEPT_GATE))
    return _apply_block


class EfficientNet(nnx.Module):
    """EfficientNet-B0..B7 on NHWC input already scaled by `normalize_input`.

    `num_classes=None` drops the classifier: the call then returns the pooled features.
    `remat=True` rematerialises each MBConv block in the backward pass (less activation
    memory at large inputs, about one extra forward of compute); `recompute="elementwise"`
    keeps only each block's convolution outputs, BatchNorm statistics and squeeze-excitation
    gate, and recomputes BatchNorm, swish and the gating from them in the backward pass
    (the same function; about half the saved activations). `depthwise` picks the
    depthwise-convolution implementation (:class:`DepthwiseConv`), `padding` the strided
    convolutions' padding (:func:`conv_padding`; imported weights expect ``tf``).
    """

    def __init__(self, variant: str, *, in_channels: int = 3, num_classes: int | None = 1000,
                 dtype: Any = jnp.float32, remat: bool = False, recompute: str = "none",
                 depthwise: str = "auto", padding: str = "tf", rngs: nnx.Rngs):
        v = _variant(variant)
        _block_apply(remat, recompute)  # a bad combination fails here, not at the first call
        if in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
        self.variant = variant
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dtype = dtype
        self.remat = remat
        self.recompute = recompute
        specs = block_specs(variant)
        stem = round_filters(_STEM_CHANNELS, v.width)
        self.num_features = round_filters(_HEAD_CHANNELS, v.width)
        self.stem_conv = _conv(in_channels, stem, 3, stride=2, dtype=dtype, rngs=rngs, padding=padding)
        self.stem_bn = BatchNorm(stem, act=True, dtype=dtype, rngs=rngs)
        self.stages = nnx.List([nnx.List([MBConv(spec, dtype=dtype, depthwise=depthwise,
                                                 padding=padding, rngs=rngs)
                                          for spec in stage])
                                for stage in specs])
        if recompute == "elementwise":
            for block in self.blocks():
                for _, m in nnx.iter_modules(block):
                    if isinstance(m, BatchNorm):
                        m.in_recomputed_block = True
        self.head_conv = _conv(specs[-1][-1].out_channels, self.num_features, 1, dtype=dtype, rngs=rngs)
        self.head_bn = BatchNorm(self.num_features, act=True, dtype=dtype, rngs=rngs)
        if num_classes is None:
            self.dropout = self.classifier = None
        else:
            self.dropout = nnx.Dropout(v.dropout, rngs=rngs)
            self.classifier = nnx.Linear(self.num_features, num_classes, kernel_init=_dense_init,
                                         dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)

    def blocks(self) -> Iterator[MBConv]:
        """All MBConv blocks in order."""
        for stage in self.stages:
            yield from stage

    def features(self, x: jax.Array) -> jax.Array:
        """Last-stage feature map [B, h, w, num_features] (after head conv + BN + swish)."""
        return self.taps(x)[HEAD]

    def taps(self, x: jax.Array, names: tuple[str, ...] = (),
             deltas: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
        """``{name: feature map}`` for stage outputs ``"stage0"``..``"stage6"`` in ``names``
        and always ``"head"`` (after head conv + BN + swish). ``deltas[name]`` is added to
        that output: differentiating with respect to it gives the layer's gradient."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"expected NHWC input with {self.in_channels} channel(s), got shape {x.shape}")
        deltas = deltas or {}
        out: dict[str, jax.Array] = {}

        def keep(name: str, h: jax.Array) -> jax.Array:
            if name in deltas:
                h = h + deltas[name].astype(h.dtype)
            if name in names or name == HEAD:
                out[name] = h
            return h

        x = self.stem_bn(self.stem_conv(x.astype(self.dtype)))
        apply = _block_apply(self.remat, self.recompute)
        for i, stage in enumerate(self.stages):
            for block in stage:
                x = apply(block, x)
            x = keep(f"stage{i}", x)
        keep(HEAD, self.head_bn(self.head_conv(x)))
        return out

    def head(self, features: jax.Array) -> jax.Array:
        """Global average pool (float32), then dropout + classifier when the model has one."""
        pooled = jnp.mean(features, axis=(1, 2), dtype=jnp.float32)
        if self.classifier is None:
            return pooled
        return self.classifier(self.dropout(pooled))

    def __call__(self, x: jax.Array, *, return_features: bool = False):
        """Logits [B, num_classes] (or pooled features if headless); with `return_features`,
        also the last-stage feature map for Grad-CAM."""
        feats = self.features(x)
        out = self.head(feats)
        return (out, feats) if return_features else out

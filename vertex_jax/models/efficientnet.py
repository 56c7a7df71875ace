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
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from vertex_jax.auto_setting import on_accelerator
from vertex_jax.errors import ConfigError
from vertex_jax.models.batchnorm import KEPT_STATS, BatchNorm
from vertex_jax.models.convolutions import CONV_INIT, DepthwiseConv, KernelConv, PointwiseConv, standard_conv

__all__ = [
    "VARIANTS", "Variant", "BlockSpec", "block_specs", "round_filters", "round_repeats",
    "MBConv", "EfficientNet", "to_unit_float", "normalize_input", "IMAGENET_MEAN",
    "IMAGENET_STD", "HEAD", "RECOMPUTE", "STAGES", "SE_POOLS", "se_dense",
    "set_se_forms", "FOLD_BN_FORMS", "set_fold_bn",
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
STAGES = len(_BASE_STAGES)  # every variant's stages (only their repeats and widths scale)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
SE_RATIO = 0.25
DROP_CONNECT_RATE = 0.2
HEAD = "head"  # name of the head convolution's output among the feature taps

# ImageNet normalisation used by the Keras and timm `tf_` weights, applied to [0, 1] inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
_KEPT_CONV, _KEPT_GATE = "conv", "se_gate"
RECOMPUTE = ("none", "elementwise")


SE_DENSE_FORMS = ("dot", "reduce")


def _check_se_form(form: str) -> None:
    if form not in SE_DENSE_FORMS:
        raise ConfigError(f"model.se_dense must be one of {SE_DENSE_FORMS}, got {form!r}")


def se_dense(layer: nnx.Linear, s: jax.Array, form: str) -> jax.Array:
    """A squeeze-excite layer (``layer``, on pooled ``s`` of shape [..., in]) in ``form``:
    ``dot``, the layer itself (a matrix product: a cuBLAS call on GPUs, which XLA autotunes
    once per distinct shape), or ``reduce``, the same products summed in float32 by XLA's
    own reduction kernels (nothing to autotune; docs/performance-notes.md §12). The output
    has the layer's dtype either way."""
    _check_se_form(form)
    if form == "dot":
        return layer(s)
    products = s.astype(jnp.float32)[..., :, None] * layer.kernel[...]
    return (jnp.sum(products, axis=-2) + layer.bias[...]).astype(layer.dtype)


SE_POOLS = ("auto", "shared", "recompute")


def _check_se_pool(form: str) -> None:
    if form not in SE_POOLS:
        raise ConfigError(f"model.se_pool must be one of {SE_POOLS}, got {form!r}")


def _pool_recomputes(form: str) -> bool:
    return form == "recompute" or (form == "auto" and on_accelerator())


def set_se_forms(module: nnx.Module, *, dense: str | None = None, pool: str | None = None) -> None:
    """Compute every squeeze-excite layer of ``module`` in form ``dense`` (:func:`se_dense`)
    and its pool in evaluation as ``pool`` says (:data:`SE_POOLS`, :meth:`MBConv.__call__`);
    None leaves a form as it is."""
    if dense is not None:
        _check_se_form(dense)
    if pool is not None:
        _check_se_pool(pool)
    for block in (m for _, m in nnx.iter_modules(module) if isinstance(m, MBConv)):
        block.se_form = block.se_form if dense is None else dense
        block.se_pool = block.se_pool if pool is None else pool


FOLD_BN_FORMS = ("auto", "separate", "folded")


def _check_fold_bn(form: str) -> None:
    if form not in FOLD_BN_FORMS:
        raise ConfigError(f"model.fold_bn must be one of {FOLD_BN_FORMS}, got {form!r}")


def _folds(bn: BatchNorm, form: str) -> bool:
    """Whether ``bn`` is folded into its convolution: in evaluation, as ``form`` says."""
    return bn.use_running_average and (form == "folded" or (form == "auto" and on_accelerator()))


def set_fold_bn(module: nnx.Module, form: str) -> None:
    """Apply every backbone BatchNorm of ``module`` in evaluation as ``form`` says
    (:data:`FOLD_BN_FORMS`): apart from its convolution, or folded into it
    (:func:`_conv_then_bn`)."""
    _check_fold_bn(form)
    for m in (m for _, m in nnx.iter_modules(module) if isinstance(m, (MBConv, EfficientNet))):
        m.fold_bn = form


def _conv_then_bn(conv: KernelConv, bn: BatchNorm, x: jax.Array,
                  fold: bool) -> tuple[jax.Array, Callable[[jax.Array], jax.Array]]:
    """``(z, finish)``: ``finish(z)`` is ``bn(conv(x))``. Separate, ``z`` is ``conv(x)`` and
    ``finish`` the BatchNorm; with ``fold`` (evaluation), ``z`` is the convolution with the
    BatchNorm's affine map folded into its kernel and ``finish`` adds the folded bias and
    applies the swish (:meth:`BatchNorm.folded_activation`). The same function up to the
    rounding of the folded kernel to the compute dtype. On GPUs XLA then runs the
    projection's convolution, bias and skip as one cuDNN call, where the convolution's
    output was written, read back and written again by the kernel that normalised it and
    added the skip (docs/performance-notes.md §21). ``z`` is what a recomputing policy keeps
    and what the squeeze-excite pool recomputes from."""
    if not fold:
        return checkpoint_name(conv(x), _KEPT_CONV), bn
    kernel, bias = bn.folded_into(conv.kernel[...])
    return (checkpoint_name(conv.with_kernel(x, kernel), _KEPT_CONV),
            functools.partial(bn.folded_activation, bias=bias))


def _conv_bn(conv: KernelConv, bn: BatchNorm, x: jax.Array, fold: bool) -> jax.Array:
    """``bn(conv(x))``, folded or not (:func:`_conv_then_bn`)."""
    z, finish = _conv_then_bn(conv, bn, x, fold)
    return finish(z)


class MBConv(nnx.Module):
    """Mobile inverted bottleneck: [1x1 expand] -> depthwise -> squeeze-excite -> 1x1 project (+skip)."""

    def __init__(self, spec: BlockSpec, *, dtype: Any = jnp.float32, depthwise: str = "auto",
                 padding: str = "tf", rngs: nnx.Rngs):
        self.spec = spec
        self.dtype = dtype
        hidden = spec.hidden
        if spec.expand != 1:
            self.expand_conv = PointwiseConv(spec.in_channels, hidden, dtype=dtype, rngs=rngs)
            self.expand_bn = BatchNorm(hidden, act=True, dtype=dtype, rngs=rngs)
        else:
            self.expand_conv = self.expand_bn = None
        self.dw_conv = DepthwiseConv(hidden, spec.kernel, stride=spec.stride, impl=depthwise,
                                     dtype=dtype, rngs=rngs, padding=padding)
        self.dw_bn = BatchNorm(hidden, act=True, dtype=dtype, rngs=rngs)
        self.se_reduce = nnx.Linear(hidden, spec.se_channels, kernel_init=CONV_INIT,
                                    dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.se_expand = nnx.Linear(spec.se_channels, hidden, kernel_init=CONV_INIT,
                                    dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        self.se_form = "dot"  # :data:`SE_DENSE_FORMS`, set by set_se_forms
        self.se_pool = "auto"  # :data:`SE_POOLS`, set by set_se_forms
        self.fold_bn = "auto"  # :data:`FOLD_BN_FORMS`, set by set_fold_bn
        self.project_conv = PointwiseConv(hidden, spec.out_channels, dtype=dtype, rngs=rngs)
        self.project_bn = BatchNorm(spec.out_channels, act=False, dtype=dtype, rngs=rngs)
        if spec.has_skip and spec.drop_rate > 0:
            # Drop-connect: drop the whole residual branch per example, scale survivors.
            self.drop_path = nnx.Dropout(spec.drop_rate, broadcast_dims=(1, 2, 3), rngs=rngs)
        else:
            self.drop_path = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """The block. In evaluation with ``se_pool`` ``recompute`` (``auto``: on accelerators)
        the squeeze-excite pool computes BatchNorm + swish again from the depthwise output,
        behind an optimization barrier, instead of reading the activation: otherwise XLA:GPU
        writes the activation from the pool's kernel (in float32 by default) and reads it
        back to gate it. The same function, and a fifth fewer bytes in B4's evaluation step
        on the described H200, with the same kernels (docs/performance-notes.md §14). CPUs
        keep the shared form (XLA:CPU ran the recomputing step 5-22% slower, with a larger
        memory plan); training always does (the backward pass keeps the activation anyway)."""
        fold = _folds(self.dw_bn, self.fold_bn)
        h = x
        if self.expand_conv is not None:
            h = _conv_bn(self.expand_conv, self.expand_bn, h, fold)
        depthwise, activation = _conv_then_bn(self.dw_conv, self.dw_bn, h, fold)
        pooled = h = activation(depthwise)
        if self.dw_bn.use_running_average and _pool_recomputes(self.se_pool):
            pooled = activation(jax.lax.optimization_barrier(depthwise))
        s = checkpoint_name(jnp.mean(pooled, axis=(1, 2), keepdims=True, dtype=jnp.float32), _KEPT_GATE)
        s = jax.nn.silu(se_dense(self.se_reduce, s, self.se_form))
        s = checkpoint_name(jax.nn.sigmoid(se_dense(self.se_expand, s, self.se_form)), _KEPT_GATE)
        return self.project(h * s.astype(self.dtype), x)

    def project(self, h: jax.Array, x: jax.Array) -> jax.Array:
        """The 1x1 projection of the gated activation ``h``, its BatchNorm (folded into it as
        ``fold_bn`` says, :func:`_conv_then_bn`), and the skip from the block's input ``x``."""
        h = _conv_bn(self.project_conv, self.project_bn, h, _folds(self.project_bn, self.fold_bn))
        if self.spec.has_skip:
            if self.drop_path is not None:
                h = self.drop_path(h)
            h = h + x
        return h


def _apply_block(block: MBConv, x: jax.Array) -> jax.Array:
    return block(x)


def _check_recompute(remat: bool, recompute: str, recompute_stages: int) -> None:
    if recompute not in RECOMPUTE:
        raise ConfigError(f"model.recompute must be one of {RECOMPUTE}, got {recompute!r}")
    if remat and recompute != "none":
        raise ConfigError("model.remat recomputes the whole block; set model.recompute=none with it")
    if not 1 <= recompute_stages <= STAGES:
        raise ConfigError(f"model.recompute_stages must be 1..{STAGES} (the first stages, where "
                          f"the activations are largest), got {recompute_stages!r}")


def _block_apply(remat: bool, recompute: str) -> Callable[[MBConv, jax.Array], jax.Array]:
    """How :meth:`EfficientNet.taps` applies a block: plainly, fully rematerialised
    (``remat``) or keeping only what ``recompute="elementwise"`` keeps."""
    if remat:
        return nnx.remat(_apply_block)
    if recompute == "elementwise":
        return nnx.remat(_apply_block, policy=jax.checkpoint_policies.save_only_these_names(
            _KEPT_CONV, KEPT_STATS, _KEPT_GATE))
    return _apply_block


class EfficientNet(nnx.Module):
    """EfficientNet-B0..B7 on NHWC input already scaled by `normalize_input`.

    `num_classes=None` drops the classifier: the call then returns the pooled features.
    `remat=True` rematerialises each MBConv block in the backward pass (less activation
    memory at large inputs, about one extra forward of compute); `recompute="elementwise"`
    keeps only each block's convolution outputs, BatchNorm statistics and squeeze-excitation
    gate, and recomputes BatchNorm, swish and the gating from them in the backward pass
    (the same function; about half the saved activations), in the first
    `recompute_stages` stages (all by default; the early, high-resolution stages hold most
    of the activations and the later ones most of the blocks). `depthwise` picks the
    depthwise-convolution implementation (:class:`DepthwiseConv`), `padding` the strided
    convolutions' padding (:func:`conv_padding`; imported weights expect ``tf``).
    """

    def __init__(self, variant: str, *, in_channels: int = 3, num_classes: int | None = 1000,
                 dtype: Any = jnp.float32, remat: bool = False, recompute: str = "none",
                 recompute_stages: int = STAGES, depthwise: str = "auto", padding: str = "tf",
                 rngs: nnx.Rngs):
        v = _variant(variant)
        _check_recompute(remat, recompute, recompute_stages)
        if in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
        self.variant = variant
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.dtype = dtype
        self.remat = remat
        self.recompute = recompute
        self.recompute_stages = recompute_stages
        self.fold_bn = "auto"  # :data:`FOLD_BN_FORMS` of the stem's and head's BatchNorms, set by set_fold_bn
        specs = block_specs(variant)
        stem = round_filters(_STEM_CHANNELS, v.width)
        self.num_features = round_filters(_HEAD_CHANNELS, v.width)
        self.stem_conv = standard_conv(in_channels, stem, 3, stride=2, dtype=dtype, rngs=rngs, padding=padding)
        self.stem_bn = BatchNorm(stem, act=True, dtype=dtype, rngs=rngs)
        self.stages = nnx.List([nnx.List([MBConv(spec, dtype=dtype, depthwise=depthwise,
                                                 padding=padding, rngs=rngs)
                                          for spec in stage])
                                for stage in specs])
        if recompute == "elementwise":
            for block in (b for stage in self.stages[:recompute_stages] for b in stage):
                for _, m in nnx.iter_modules(block):
                    if isinstance(m, BatchNorm):
                        m.in_recomputed_block = True
        self.head_conv = PointwiseConv(specs[-1][-1].out_channels, self.num_features, dtype=dtype, rngs=rngs)
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

        fold = _folds(self.stem_bn, self.fold_bn)
        x = _conv_bn(self.stem_conv, self.stem_bn, x.astype(self.dtype), fold)
        for i, stage in enumerate(self.stages):
            apply = _block_apply(self.remat, self.recompute if i < self.recompute_stages else "none")
            for block in stage:
                x = apply(block, x)
            x = keep(f"stage{i}", x)
        keep(HEAD, _conv_bn(self.head_conv, self.head_bn, x, fold))
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

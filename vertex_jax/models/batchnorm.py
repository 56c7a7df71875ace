"""Training-mode BatchNorm in two implementations of one function, with float32 statistics.

``fused`` (:func:`fused_batch_norm`) has a hand-written backward pass; ``autodiff``
differentiates the batch statistics (custom VJP) and a rematerialised normalisation. Both
keep only the compute-dtype input and per-channel statistics for the backward pass. The
TF reference settings (momentum 0.99, epsilon 1e-3) are the defaults, as the Keras/timm
weights were trained with them.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from vertex_jax.auto_setting import on_accelerator
from vertex_jax.errors import ConfigError

__all__ = ["BatchNorm", "BATCHNORM_IMPLS", "BATCHNORM_GRADS", "BN_MOMENTUM", "BN_EPSILON", "KEPT_STATS",
           "fused_batch_norm", "set_bn_impl", "set_bn_momentum"]

BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
# The name of the batch statistics for a recomputing policy (``recompute="elementwise"``
# keeps them, :mod:`vertex_jax.models.efficientnet`).
KEPT_STATS = "bn_stats"


def _channel_sums(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-channel sums of ``a`` and ``b`` (same shape, float32) over all but the last axis.

    On accelerators one reduction of ``a + i b`` (complex64: two float32 sums, added exactly
    as two reductions would). XLA:GPU splits a long reduction into two kernels, and two
    ``jnp.sum`` calls share only the first. One reduction also lets XLA fuse the backward
    pass's ``dz`` into it (one pass computes ``dz`` and its sums): 320 kernels and ~30 GB
    fewer in the B4 step (docs/performance-notes.md §12). A two-operand ``lax.reduce`` is
    gathered by XLA's partitioner when the batch is sharded, and a sum of the two stacked
    saves only the final kernels. CPUs keep two sums: XLA:CPU ran both of those forms
    6-9x slower (this one was not timed there).
    """
    axes = tuple(range(a.ndim - 1))
    if not on_accelerator():
        return jnp.sum(a, axis=axes), jnp.sum(b, axis=axes)
    sums = jnp.sum(jax.lax.complex(a, b), axis=axes)
    return jnp.real(sums), jnp.imag(sums)


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
    return (mean, var), (x, checkpoint_name(mean, KEPT_STATS))


def _batch_stats_bwd(residuals, cotangents):
    x, mean = residuals
    g_mean, g_var = cotangents
    n = x.size // x.shape[-1]
    dx = (g_mean + 2.0 * g_var * (x.astype(jnp.float32) - mean)) / n
    return (dx.astype(x.dtype),)


_batch_stats.defvjp(_batch_stats_fwd, _batch_stats_bwd)


def _gain(scale: jax.Array, var: jax.Array, epsilon: float) -> jax.Array:
    """scale / sqrt(var + eps): what normalising multiplies by, per channel."""
    return scale * jax.lax.rsqrt(var + epsilon)


def _normalize_act_plain(x, scale, bias, mean, var, epsilon: float, act: bool, dtype) -> jax.Array:
    """(x - mean) * scale / sqrt(var + eps) + bias, optional swish, computed in float32."""
    y = (x.astype(jnp.float32) - mean) * _gain(scale, var, epsilon) + bias
    return (jax.nn.silu(y) if act else y).astype(dtype)


# Rematerialised: the backward pass keeps the compute-dtype input, not float32 temporaries.
# Inside a block under recompute="elementwise" the plain form is used: the block's own
# policy recomputes it, and an inner checkpoint's output would be kept by that policy.
_normalize_act = functools.partial(jax.checkpoint, static_argnums=(5, 6, 7))(_normalize_act_plain)


def _named(stats: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Batch statistics named so that ``recompute="elementwise"`` keeps them."""
    return tuple(checkpoint_name(v, KEPT_STATS) for v in stats)  # type: ignore[return-value]


def fused_batch_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, act: bool,
                     dtype: Any, grad: str = "recompute") -> tuple[jax.Array, jax.Array, jax.Array]:
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

    ``grad`` (:data:`BATCHNORM_GRADS`) says how the swish's cotangent ``dz`` reaches the
    second pass. ``"float32"``: XLA computes it in the reduction's pass and writes it out
    in float32 for the ``dx`` pass to read. ``"compute"``: the same, rounded to the output
    cotangent's dtype (bfloat16 under mixed precision, as a framework that differentiates
    op by op does): half the bytes, kept only by the XLA preset that keeps bfloat16
    roundings (folded away under XLA's default). ``"recompute"`` (the default): the ``dx``
    pass computes ``dz`` again from ``x`` and the output cotangent, which it reads anyway;
    an optimization barrier on ``x`` keeps XLA from merging the two. The float32
    arithmetic of ``"float32"`` with nothing written between the passes: on the B4 step
    −31 of ~236 GB on the described H200, same kernels (docs/performance-notes.md §12, §15).
    """
    _check_grad(grad)
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

    def normalized_and_cotangent(x: jax.Array, g_y: jax.Array) -> tuple[jax.Array, jax.Array]:
        x_hat = (x.astype(jnp.float32) - mean) * rstd
        dz = g_y.astype(jnp.float32)
        if act:  # d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z)
            z = x_hat * scale + bias
            s = jax.nn.sigmoid(z)
            dz = dz * (s * (1.0 + z * (1.0 - s)))
            if grad == "compute":  # a no-op for a float32 cotangent
                # XLA keeps this rounding only with xla_allow_excess_precision=false (the
                # fast-compile-no-excess-precision preset); by default it computes dz in float32.
                dz = dz.astype(g_y.dtype).astype(jnp.float32)
        return x_hat, dz

    x_hat, dz = normalized_and_cotangent(x, g_y)
    sum_dz, sum_dz_xhat = _channel_sums(dz, dz * x_hat)
    if grad == "recompute" and act:  # without the swish, dz is the cotangent itself
        # The dx pass computes dz again: x behind a barrier keeps XLA from sharing it, and
        # g_y as it comes lets XLA compute that in the dx pass too rather than write it out
        # (a barrier on both wrote g_y: 5 GB more per B4 step, §15).
        x_hat, dz = normalized_and_cotangent(jax.lax.optimization_barrier(x), g_y)
    dx = (scale * rstd) * (dz - sum_dz / n - x_hat * (sum_dz_xhat / n))
    return dx.astype(x.dtype), sum_dz_xhat, sum_dz, jnp.zeros_like(mean), jnp.zeros_like(var)


_normalize_act_fused.defvjp(_normalize_act_fused_fwd, _normalize_act_fused_bwd)

BATCHNORM_IMPLS = ("auto", "autodiff", "fused")
# How the fused backward pass's swish cotangent dz reaches its second pass (fused_batch_norm)
BATCHNORM_GRADS = ("recompute", "float32", "compute")


def _check_grad(grad: str) -> None:
    if grad not in BATCHNORM_GRADS:
        raise ConfigError(f"model.batchnorm_grad must be one of {BATCHNORM_GRADS}, got {grad!r}")


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
        self.grad = "recompute"  # fused only: :data:`BATCHNORM_GRADS`, set by set_bn_impl
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

    def folded_into(self, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(kernel', bias')`` of the linear layer before this BatchNorm (``kernel``: output
        channels last) with the BatchNorm's affine map in evaluation folded in:
        ``x @ kernel' + bias'`` is the normalised ``x @ kernel`` (running statistics), before
        the swish (:meth:`folded_activation` adds the bias and applies it). float32, as
        :func:`_normalize_act_plain`."""
        k = _gain(self.scale[...], self.var[...], self.epsilon)
        return kernel.astype(jnp.float32) * k, self.bias[...] - self.mean[...] * k

    def folded_activation(self, z: jax.Array, bias: jax.Array) -> jax.Array:
        """What is left of this BatchNorm once folded (:meth:`folded_into`) on ``z``, the
        output of the folded layer: the folded ``bias`` and the swish, in float32 as
        :func:`_normalize_act_plain`, output in the compute dtype; without a swish, the bias
        added in ``z``'s dtype (so that XLA:GPU can give it, and a skip added next, to the
        convolution as its bias and side input)."""
        if self.act:
            return jax.nn.silu(z.astype(jnp.float32) + bias).astype(self.compute_dtype)
        return z + bias.astype(z.dtype)


def set_bn_impl(module: nnx.Module, impl: str, grad: str | None = None) -> None:
    """Use BatchNorm implementation ``impl`` (:data:`BATCHNORM_IMPLS`) everywhere in
    ``module``, the fused one taking its swish cotangent to its second pass as ``grad`` says
    (:data:`BATCHNORM_GRADS`; None: as it is). ``grad`` acts on the fused form only (``auto`` is autodiff on CPUs)."""
    if impl not in BATCHNORM_IMPLS:
        raise ConfigError(f"model.batchnorm must be one of {BATCHNORM_IMPLS}, got {impl!r}")
    if grad is not None:
        _check_grad(grad)
    for _, m in nnx.iter_modules(module):
        if isinstance(m, BatchNorm):
            m.impl = impl
            m.grad = m.grad if grad is None else grad


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

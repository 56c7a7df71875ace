"""``model.fold_bn``: in evaluation each BatchNorm folded into its convolution's kernel and a
bias computes the separate form's function, up to the roundings the fold adds, bounded here
from the arithmetic of both forms."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from vertex_jax.errors import ConfigError
from vertex_jax.models.batchnorm import BatchNorm
from vertex_jax.models.convolutions import PointwiseConv
from vertex_jax.models.efficientnet import BlockSpec, EfficientNet, MBConv, set_fold_bn

UNIT_ROUNDOFF = {jnp.float32: 2.0 ** -24, jnp.bfloat16: 2.0 ** -8}  # round to nearest, p = 24 / 8


def _random_statistics(module: nnx.Module, rng: np.random.Generator) -> None:
    """Running statistics and affine parameters away from (0, 1, 1, 0), so that a fold that
    dropped the mean, the bias or the scale would show."""
    for _, m in nnx.iter_modules(module):
        if isinstance(m, BatchNorm):
            m.mean[...] = jnp.asarray(rng.normal(0, 0.5, m.mean.shape), jnp.float32)
            m.var[...] = jnp.asarray(rng.uniform(0.3, 3.0, m.var.shape), jnp.float32)
            m.scale[...] = jnp.asarray(rng.normal(1.0, 0.4, m.scale.shape), jnp.float32)
            m.bias[...] = jnp.asarray(rng.normal(0, 0.5, m.bias.shape), jnp.float32)


def _rounding_bound(h, x, w, bn: BatchNorm, u: float) -> np.ndarray:
    """How far the two forms' outputs can be apart, elementwise, from their arithmetic.

    Both are compared with the exact value ``O = h·w·k + b' + x`` (float64; ``k`` the
    BatchNorm's scale over its standard deviation, ``b'`` its bias less ``mean·k``). Each
    rounding to the compute dtype (unit roundoff ``u``) moves a value ``v`` by at most
    ``u|v|``. The separate form rounds the kernel, the convolution's output (then scaled by
    ``k``), the BatchNorm's output and the sum with the skip; the folded form the folded
    kernel, the convolution's output, the bias, the convolution plus bias, and the sum.
    With ``A = |h|·|w·k|`` (the largest a product sum can be), the two kernels' roundings
    and the two convolution outputs' are each at most ``u·A(1+u)``. Convolutions accumulate
    in float32, as XLA's and cuDNN's do: each ``cin·2^-24·A`` at most per form. Float32 steps
    besides: ``k`` itself (a sum, a reciprocal square root and a product: 4·2^-24 of ``k``,
    which each form applies to the products and the mean), the separate form's subtraction,
    product and sum, and the folded form's ``mean·k`` and ``bias − mean·k``. A factor 1.05
    covers second-order terms (products of roundings)."""
    f64 = lambda a: np.asarray(jnp.asarray(a, jnp.float32), np.float64)  # noqa: E731
    h, w = f64(h), f64(w)[0, 0]
    x = 0.0 if x is None else f64(x)
    mean, var, scale, bias = (f64(v[...]) for v in (bn.mean, bn.var, bn.scale, bn.bias))
    k = scale / np.sqrt(var + bn.epsilon)
    folded_bias = bias - mean * k
    products = np.einsum("...c,cd->...d", np.abs(h), np.abs(w))
    a = products * np.abs(k)
    exact_bn = np.einsum("...c,cd->...d", h, w) * k + folded_bias
    exact = exact_bn + x
    f32 = 2.0 ** -24
    accumulate = w.shape[0] * f32 * a
    scale_error = 4 * f32 * np.abs(k) * (products + np.abs(mean))  # k's own float32 error, per form
    separate_f32 = 4 * f32 * (np.abs(k) * (products + np.abs(mean)) + np.abs(bias))
    folded_f32 = f32 * (np.abs(mean * k) + np.abs(folded_bias))
    per_form = 2 * u * a + u * (np.abs(exact_bn) + 4 * u * a) + u * (np.abs(exact) + 5 * u * a) + accumulate
    return 1.05 * (2 * (per_form + scale_error) + u * np.abs(folded_bias) + separate_f32 + folded_f32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("skip", [True, False], ids=["skip", "no-skip"])
def test_a_folded_projection_is_the_separate_one_within_its_roundings(dtype, skip):
    """One block's projection, BatchNorm and skip in evaluation, folded against separate,
    within :func:`_rounding_bound`. In float32 the bound is far below what a wrong fold
    changes (1% of the BatchNorm's mean term, in the channel where it is largest), so it
    tests the fold, not only that two numbers are near; in bfloat16 it is what the roundings
    allow."""
    rng = np.random.default_rng(3)
    cin, cout = (24, 24) if skip else (16, 24)
    spec = BlockSpec(stage=1, index=1, expand=6, kernel=3, stride=1, in_channels=cin,
                     out_channels=cout, drop_rate=0.1)
    block = MBConv(spec, dtype=dtype, rngs=nnx.Rngs(0))
    _random_statistics(block, rng)
    block.eval()
    h = jnp.asarray(rng.normal(0, 1.0, (2, 8, 6, spec.hidden)), dtype)
    x = jnp.asarray(rng.normal(0, 1.0, (2, 8, 6, cin)), dtype)

    def project(form: str) -> np.ndarray:
        set_fold_bn(block, form)
        return np.asarray(jax.jit(block.project)(h, x).astype(jnp.float32), np.float64)

    separate, folded = project("separate"), project("folded")
    assert separate.dtype == folded.dtype and not np.array_equal(separate, folded)
    bound = _rounding_bound(h, x if skip else None, block.project_conv.kernel[...], block.project_bn,
                            UNIT_ROUNDOFF[dtype])
    excess = np.abs(folded - separate) - bound
    assert excess.max() <= 0, f"folded differs by up to {excess.max():.3g} beyond the rounding bound"
    if dtype == jnp.bfloat16:
        return
    bn = block.project_bn
    mean_term = np.abs(np.asarray(bn.mean[...] * bn.scale[...] * jax.lax.rsqrt(bn.var[...] + bn.epsilon)))
    channel = int(np.argmax(mean_term))  # a fold losing 1% of this channel's mean shows there
    assert bound[..., channel].max() < 0.01 * mean_term[channel]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_a_folded_batchnorm_with_its_swish_is_the_separate_one_within_its_roundings(dtype):
    """A 1x1 convolution and a BatchNorm with its swish (an expansion, the stem, the head):
    folded, the swish applies to the folded convolution plus bias. Its input differs from
    the separate form's by at most :func:`_rounding_bound` (no skip); the swish's slope is at
    most 1.1 in magnitude, and each form rounds its output once more."""
    rng = np.random.default_rng(4)
    conv = PointwiseConv(40, 96, dtype=dtype, rngs=nnx.Rngs(1))
    bn = BatchNorm(96, act=True, dtype=dtype, rngs=nnx.Rngs(2))
    _random_statistics(bn, rng)
    bn.eval()
    x = jnp.asarray(rng.normal(0, 1.0, (2, 8, 6, 40)), dtype)

    def folded(x):
        kernel, bias = bn.folded_into(conv.kernel[...])
        return bn.folded_activation(conv.with_kernel(x, kernel), bias)

    f64 = lambda a: np.asarray(a.astype(jnp.float32), np.float64)  # noqa: E731
    separate, folded = f64(jax.jit(lambda x: bn(conv(x)))(x)), f64(jax.jit(folded)(x))
    u = UNIT_ROUNDOFF[dtype]
    before = 1.1 * _rounding_bound(x, None, conv.kernel[...], bn, u)
    bound = 1.05 * (before + 2 * u * (np.abs(separate) + before))
    excess = np.abs(folded - separate) - bound
    assert excess.max() <= 0, f"folded differs by up to {excess.max():.3g} beyond the rounding bound"
    assert not np.array_equal(separate, folded) and np.abs(separate).max() > 0


def test_a_network_folds_every_batchnorm_in_evaluation_only(accelerator_form, monkeypatch):
    """The tiny EfficientNet in evaluation: ``folded`` folds each BatchNorm once (stem, the
    blocks', head), ``auto`` folds on accelerators only, training never folds, and the
    outputs and the input gradient (saliency) agree with ``separate``. Each fold moves a
    layer by float32 roundings (the tests above); through 7 blocks that stays far below 1e-3
    of the output, which a wrong fold in any layer (its mean, bias or scale lost) exceeds
    many times over."""
    rng = np.random.default_rng(5)
    net = EfficientNet("tiny", num_classes=3, depthwise="conv", rngs=nnx.Rngs(0))
    _random_statistics(net, rng)
    images = jnp.asarray(rng.normal(size=(2, 64, 32, 3)), jnp.float32)
    folds = []
    original = BatchNorm.folded_into
    monkeypatch.setattr(BatchNorm, "folded_into", lambda bn, kernel: folds.append(bn) or original(bn, kernel))

    def run(form: str, train: bool = False):
        set_fold_bn(net, form)
        net.train() if train else net.eval()
        graphdef, state = nnx.split(net)
        folds.clear()
        jax.make_jaxpr(lambda i, st: nnx.merge(graphdef, st)(i))(images, state)
        counted = len(folds)
        if train:
            return counted, None, None
        forward = lambda i: nnx.merge(graphdef, state)(i)  # noqa: E731
        grad = jax.jit(jax.grad(lambda i: jnp.sum(forward(i)[:, 0])))(images)
        return counted, jax.jit(forward)(images), grad

    norms = sum(1 for _, m in nnx.iter_modules(net) if isinstance(m, BatchNorm))
    (none, separate, separate_grad), (every, folded, folded_grad) = run("separate"), run("folded")
    assert none == 0 and every == norms
    assert run("auto")[0] == (norms if accelerator_form else 0)
    assert run("folded", train=True)[0] == 0
    np.testing.assert_allclose(folded, separate, rtol=0, atol=1e-3 * float(jnp.max(jnp.abs(separate))))
    np.testing.assert_allclose(folded_grad, separate_grad, rtol=0,
                               atol=1e-3 * float(jnp.max(jnp.abs(separate_grad))))
    assert float(jnp.max(jnp.abs(separate))) > 0 and float(jnp.max(jnp.abs(separate_grad))) > 0
    with pytest.raises(ConfigError, match="model.fold_bn"):
        set_fold_bn(net, "sometimes")

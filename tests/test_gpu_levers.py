"""The GPU levers behind settings compute the same function as before (or, for symmetric
padding, their own documented semantics), on CPU against independent references."""

import os
from types import SimpleNamespace

import numpy as np
import optax
import pytest
import jax
import jax.numpy as jnp
from flax import nnx
from scipy.signal import correlate2d

from vertex_jax.bench.gpu_verdicts import combine_levers, lever_verdicts
from vertex_jax.bench.gpu_points import Point
from vertex_jax.models.batchnorm import BatchNorm, fused_batch_norm, set_bn_impl
from vertex_jax.models.convolutions import (DepthwiseConv, PointwiseConv, conv_padding, set_pointwise_impl,
                                            standard_conv)
from vertex_jax.models.efficientnet import MBConv, block_specs, se_dense, set_se_forms
from vertex_jax.train.packing import StatePacking
from vertex_jax.config_files import load_config
from vertex_jax.xla_flags import PRESETS, apply_preset

EPS32 = 2.0 ** -24


def naive_bn(x, scale, bias, act):
    """Training-mode BatchNorm + swish written plainly (autodiff gives its gradient)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)
    z = (x - mean) / jnp.sqrt(var + 1e-3) * scale + bias
    return jax.nn.silu(z) if act else z


@pytest.mark.parametrize("grad", ["recompute", "float32"])
@pytest.mark.parametrize("act", [True, False])
def test_fused_batchnorm_matches_autodiff_of_the_plain_formula(act, grad, accelerator_form):
    """Output and every gradient against autodiff of the two-pass formula, in float64
    (x64 on); the fused form computes in float32, so they agree to float32 rounding
    of sums over n = 192 elements: relative error < n * 2^-24 * (a small constant),
    whatever order the sums add in (two reductions or one complex one), and whether the
    ``dx`` pass reads ``dz`` or computes it again (``batchnorm_grad``)."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.5, 2.0, (4, 8, 6, 5))  # mean comparable to std: little cancellation
    scale, bias = rng.normal(1, 0.3, 5), rng.normal(0, 0.3, 5)
    w = rng.normal(size=x.shape)
    tol = 8 * (x.size // 5) * EPS32

    def fused(x, scale, bias):
        y, _, _ = fused_batch_norm(x.astype(jnp.float32), scale.astype(jnp.float32),
                                   bias.astype(jnp.float32), 1e-3, act, jnp.float32, grad)
        return jnp.sum(y * w.astype(np.float32))
    with jax.enable_x64(True):
        args = tuple(jnp.asarray(a, jnp.float64) for a in (x, scale, bias))
        ref = [np.asarray(g) for g in
               jax.grad(lambda *a: jnp.sum(naive_bn(*a, act) * w), argnums=(0, 1, 2))(*args)]
        ref_y = np.asarray(naive_bn(*args, act))
    got = jax.grad(fused, argnums=(0, 1, 2))(*(a.astype(jnp.float32) for a in args))
    y, mean, var = fused_batch_norm(jnp.asarray(x, jnp.float32), jnp.asarray(scale, jnp.float32),
                                    jnp.asarray(bias, jnp.float32), 1e-3, act, jnp.float32)
    rel = lambda a, b: np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)  # noqa: E731
    assert rel(y, ref_y) < tol
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=tol)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=tol)
    for g, r in zip(got, ref):
        assert rel(g, r) < tol


def test_both_batchnorm_impls_train_the_same_network():
    """A BatchNorm layer in training mode: same output, running statistics and
    gradients with ``fused`` and ``autodiff`` (float32; same tolerance argument)."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(0.5, 1.0, (2, 6, 4, 8)), jnp.float32)
    results = {}
    for impl in ("fused", "autodiff"):
        bn = BatchNorm(8, act=True, dtype=jnp.float32, rngs=nnx.Rngs(0))
        set_bn_impl(bn, impl)

        def loss(bn):
            return jnp.sum(bn(x) ** 2)
        grads = nnx.grad(loss)(bn)
        results[impl] = (bn(x), bn.mean[...], bn.var[...], grads["scale"][...], grads["bias"][...])
    tol = 8 * 48 * EPS32
    for a, b in zip(results["fused"], results["autodiff"]):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(jnp.max(jnp.abs(b))))
    with pytest.raises(ValueError, match="model.batchnorm"):
        set_bn_impl(nnx.Sequential(), "cudnn")
    with pytest.raises(ValueError, match="model.batchnorm_grad"):
        set_bn_impl(nnx.Sequential(), "fused", "float16")


def test_batch_statistics_of_a_batch_sharded_over_devices(accelerator_form):
    """Data-parallel training shards the batch: in either form the per-channel statistics
    come from per-device partial sums and one all-reduce (no device gathers the
    activations), and equal numpy's mean and variance to float32 rounding."""
    import re
    from jax.sharding import NamedSharding, PartitionSpec
    from vertex_jax.models.batchnorm import _stats

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    x = np.random.default_rng(2).normal(1, 2, (2 * jax.device_count(), 6, 5, 3)).astype(np.float32)
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    lowered = jax.jit(lambda x: _stats(x)).lower(sharded)  # a new function: traced in this form
    assert lowered.as_text().count("stablehlo.reduce") == (1 if accelerator_form else 2)
    compiled = lowered.compile()
    collectives = set(re.findall(r"\b(all-reduce|all-gather|all-to-all|collective-permute)\b", compiled.as_text()))
    assert collectives == ({"all-reduce"} if jax.device_count() > 1 else set())
    mean, var = compiled(sharded)
    tol = 8 * (x.size // 3) * EPS32
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=tol)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=tol)


def _bn_backward_case(seed: int):
    """A bfloat16 BatchNorm + swish input with float32 scale, bias and output weights, and
    from a float64 evaluation of the formula (independent of the code under test) the
    magnitudes its backward pass adds up: per element |dz| and |dz x_hat|, and the size of
    the terms of dx = scale rstd (dz - mean(dz) - x_hat mean(dz x_hat)); n per channel."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(0.3, 1.0, (4, 6, 5, 8)), jnp.bfloat16)
    scale = jnp.asarray(rng.normal(1, 0.3, 8), jnp.float32)
    bias = jnp.asarray(rng.normal(0, 0.3, 8), jnp.float32)
    w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    xf, g = np.asarray(x, np.float64), np.asarray(w.astype(jnp.bfloat16), np.float64)  # dL/dy in bf16
    rstd = 1 / np.sqrt(xf.var((0, 1, 2)) + 1e-3)
    x_hat = (xf - xf.mean((0, 1, 2))) * rstd
    z = x_hat * np.asarray(scale, np.float64) + np.asarray(bias, np.float64)
    sig = 1 / (1 + np.exp(-z))
    dz = np.abs(g * sig * (1 + z * (1 - sig)))
    dz_xhat = dz * np.abs(x_hat)
    dx_terms = np.abs(np.asarray(scale, np.float64)) * rstd * (
        dz + dz.mean((0, 1, 2)) + np.abs(x_hat) * dz_xhat.mean((0, 1, 2)))
    return (x, scale, bias, w), SimpleNamespace(n=xf.size // 8, dz=dz, dz_xhat=dz_xhat, dx_terms=dx_terms)


def test_batchnorm_grad_recompute_is_the_float32_arithmetic_without_dz_between_the_passes():
    """``model.batchnorm_grad=recompute`` (the default): the ``dx`` pass computes ``dz``
    from ``x`` (behind an optimization barrier) and the output cotangent again, instead of
    reading the reduction pass's float32 ``dz``. Both compiled by XLA, which fuses each
    program its own way: the same float32 operations on the same values, so the gradients
    agree to float32 rounding. Bounds from a float64 evaluation of the formula: the sums
    by 64 n 2^-24 of the sum of the magnitudes they add (any order), ``dx`` by 64 n 2^-24
    of its terms' magnitudes, plus one bfloat16 rounding of ``dx`` either side."""
    (x, scale, bias, w), ref = _bn_backward_case(8)

    def loss(x, scale, bias, grad):
        y, _, _ = fused_batch_norm(x, scale, bias, 1e-3, True, jnp.bfloat16, grad)
        return jnp.sum(y.astype(jnp.float32) * w)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    got = {grad: [np.asarray(g, np.float64) for g in grads(x, scale, bias, grad)] for grad in ("recompute", "float32")}
    jaxprs = {grad: str(jax.make_jaxpr(jax.grad(loss, argnums=0), static_argnums=3)(x, scale, bias, grad))
              for grad in ("recompute", "float32")}
    assert "optimization_barrier" in jaxprs["recompute"] and "optimization_barrier" not in jaxprs["float32"]
    (dx_r, ds_r, db_r), (dx_f, ds_f, db_f) = got["recompute"], got["float32"]
    f32 = 64 * ref.n * EPS32
    assert np.all(np.abs(db_r - db_f) <= f32 * ref.dz.sum((0, 1, 2)))
    assert np.all(np.abs(ds_r - ds_f) <= f32 * ref.dz_xhat.sum((0, 1, 2)))
    assert np.all(np.abs(dx_r - dx_f) <= f32 * ref.dx_terms + 2.0 ** -8 * (np.abs(dx_r) + np.abs(dx_f)))
    assert np.abs(dx_f).max() > 0 and np.abs(ds_f).max() > 0


def test_batchnorm_grad_compute_rounds_only_the_swish_cotangent(accelerator_form):
    """``model.batchnorm_grad=compute`` under bfloat16: the fused backward pass rounds
    ``dz`` (the cotangent before the swish) to bfloat16. Against the float32 form the
    output is identical and each gradient moves by at most what rounding ``dz`` can
    move it: |d dz_i| <= 2^-8 |dz_i| (bfloat16's unit roundoff: 8 significant bits), so the bias gradient
    sum(dz) by 2^-8 sum|dz|, the scale gradient sum(dz x_hat) by 2^-8 sum|dz x_hat|, and dx
    by its own arithmetic plus one bfloat16 rounding of each side. ``dz`` and ``x_hat`` come
    from a float64 evaluation of the formula, independent of the code under test."""
    (x, scale, bias, w), ref = _bn_backward_case(7)

    def grads(grad):
        def loss(x, scale, bias):
            y, _, _ = fused_batch_norm(x, scale, bias, 1e-3, True, jnp.bfloat16, grad)
            return jnp.sum(y.astype(jnp.float32) * w)
        return [np.asarray(g, np.float64) for g in jax.grad(loss, argnums=(0, 1, 2))(x, scale, bias)]

    outputs = [np.asarray(fused_batch_norm(x, scale, bias, 1e-3, True, jnp.bfloat16, grad)[0], np.float32)
               for grad in ("float32", "compute")]
    np.testing.assert_array_equal(*outputs)  # the forward pass is untouched

    (dx32, ds32, db32), (dx16, ds16, db16) = grads("float32"), grads("compute")
    f32 = 64 * ref.n * EPS32  # float32 sums in either form
    r = 2.0 ** -8
    assert np.all(np.abs(db16 - db32) <= r * ref.dz.sum((0, 1, 2)) + f32 * ref.dz.sum((0, 1, 2)))
    assert np.all(np.abs(ds16 - ds32) <= (r + f32) * ref.dz_xhat.sum((0, 1, 2)))
    assert np.all(np.abs(dx16 - dx32) <= (r + f32) * ref.dx_terms + r * (np.abs(dx16) + np.abs(dx32)))
    assert not np.array_equal(ds16, ds32)  # the rounding happened (XLA:CPU keeps it; XLA:GPU with the no-excess-precision preset)
    with pytest.raises(ValueError, match="model.batchnorm_grad"):
        fused_batch_norm(x, scale, bias, 1e-3, True, jnp.bfloat16, "bfloat16")


def test_se_dense_reduce_is_the_layer_without_a_matrix_product():
    """``model.se_dense=reduce`` computes the squeeze-excite layer as products summed in
    float32: against float64 ``s @ W + b`` it errs by at most float32 rounding of a sum of
    ``c_in`` products (c_in * 2^-24 * sum|s_i W_ij| + |b| 2^-24, slack 4x), like the float32
    matrix product; its output keeps the layer's dtype, and a block's traced program in
    that form has no matrix product at all (nothing for a GPU's autotuner)."""
    rng = np.random.default_rng(3)
    layer = nnx.Linear(96, 24, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.asarray(rng.normal(size=24), jnp.float32)
    s = jnp.asarray(rng.normal(size=(5, 1, 1, 96)), jnp.float32)
    w, b, s64 = (np.asarray(a, np.float64) for a in (layer.kernel[...], layer.bias[...], s))
    ref = s64 @ w + b
    bound = 4 * (96 * EPS32 * (np.abs(s64) @ np.abs(w)) + EPS32 * np.abs(b))
    for form in ("dot", "reduce"):
        out = np.asarray(se_dense(layer, s, form), np.float64)
        assert out.shape == ref.shape and np.all(np.abs(out - ref) <= bound), form
    layer16 = nnx.Linear(96, 24, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert se_dense(layer16, s, "reduce").dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="model.se_dense"):
        se_dense(layer, s, "einsum")

    spec = block_specs("tiny")[1][0]
    block = MBConv(spec, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, spec.in_channels), jnp.float32)
    def dots(form):
        set_se_forms(block, dense=form)
        g, st = nnx.split(block)
        return str(jax.make_jaxpr(lambda st: nnx.merge(g, st)(x))(st)).count("dot_general")
    assert dots("dot") == 2 and dots("reduce") == 0
    with pytest.raises(ValueError, match="model.se_dense"):
        set_se_forms(block, dense="einsum")


def test_pointwise_dot_is_the_1x1_convolution_as_a_matrix_product():
    """``model.pointwise=dot``: the output and the input's and kernel's gradients of a 1x1
    convolution as a matrix product, against float64, within float32 rounding of their
    sums (n 2^-24 sum|terms| for a sum of n products, slack 4x: n = c_in for the output,
    c_out for the input's gradient, every pixel for the kernel's), as the convolution is;
    the output keeps the layer's dtype; a block's traced program in that form has only
    its depthwise convolution left; the setting is checked."""
    rng = np.random.default_rng(4)
    conv = PointwiseConv(12, 40, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x, g = rng.normal(size=(3, 5, 4, 12)), rng.normal(size=(3, 5, 4, 40))
    w = np.asarray(conv.kernel[...], np.float64)[0, 0]
    refs = (x @ w, g @ w.T, np.einsum("nhwc,nhwd->cd", x, g))
    bounds = (4 * 12 * EPS32 * (np.abs(x) @ np.abs(w)), 4 * 40 * EPS32 * (np.abs(g) @ np.abs(w.T)),
              4 * x[..., 0].size * EPS32 * np.einsum("nhwc,nhwd->cd", np.abs(x), np.abs(g)))
    x32, g32 = jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32)
    for impl in ("conv", "dot"):
        set_pointwise_impl(conv, impl)
        graph, state = nnx.split(conv)
        d_state, d_x = jax.grad(lambda st, x: jnp.sum(nnx.merge(graph, st)(x) * g32),
                                argnums=(0, 1))(state, x32)
        for got, ref, bound in zip((conv(x32), d_x, d_state["kernel"][...][0, 0]), refs, bounds):
            assert np.all(np.abs(np.asarray(got, np.float64) - ref) <= bound), impl
    conv16 = PointwiseConv(12, 40, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    set_pointwise_impl(conv16, "dot")
    assert conv16(jnp.ones((1, 2, 2, 12), jnp.float32)).dtype == jnp.bfloat16

    spec = block_specs("tiny")[1][0]
    block = MBConv(spec, depthwise="conv", rngs=nnx.Rngs(0))
    xb = jnp.ones((2, 8, 8, spec.in_channels), jnp.float32)
    def convolutions(impl):
        set_pointwise_impl(block, impl)
        graph, state = nnx.split(block)
        return str(jax.make_jaxpr(lambda st: nnx.merge(graph, st)(xb))(state)).count("conv_general_dilated")
    assert spec.expand != 1 and convolutions("conv") == 3 and convolutions("dot") == 1
    with pytest.raises(ValueError, match="model.pointwise"):
        set_pointwise_impl(block, "einsum")


@pytest.mark.parametrize("kernel", [3, 5])
def test_symmetric_padding_is_k_minus_1_over_2_on_every_side(kernel):
    """Stride 2 on an even size: symmetric padding equals a correlation of the input
    zero-padded by (k-1)/2 on each side (scipy), sampled every second pixel, for both
    depthwise implementations and the plain convolution; TF SAME differs there."""
    rng = np.random.default_rng(kernel)
    x = rng.normal(size=(1, 10, 8, 1)).astype(np.float32)
    p = (kernel - 1) // 2
    assert conv_padding(kernel, "symmetric") == ((p, p), (p, p)) and conv_padding(kernel, "tf") == "SAME"
    with pytest.raises(ValueError, match="model.padding"):
        conv_padding(kernel, "reflect")
    outs = {}
    for impl in ("conv", "shifts"):
        layer = DepthwiseConv(1, kernel, stride=2, impl=impl, dtype=jnp.float32, rngs=nnx.Rngs(0),
                              padding="symmetric")
        outs[impl] = np.asarray(layer(jnp.asarray(x)))[0, :, :, 0]
        kernel_2d = np.asarray(layer.kernel[...])[:, :, 0, 0]
    plain = standard_conv(1, 1, kernel, stride=2, dtype=jnp.float32, rngs=nnx.Rngs(0), padding="symmetric")
    plain.kernel[...] = jnp.asarray(kernel_2d[:, :, None, None])
    ref = correlate2d(np.pad(x[0, :, :, 0], p), kernel_2d, mode="valid")[::2, ::2]
    for out in (*outs.values(), np.asarray(plain(jnp.asarray(x)))[0, :, :, 0]):
        assert out.shape == (5, 4)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    tf_layer = DepthwiseConv(1, kernel, stride=2, impl="conv", dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert not np.allclose(np.asarray(tf_layer(jnp.asarray(x)))[0, :, :, 0], ref, atol=1e-3)


def test_packing_round_trips_every_leaf_exactly():
    rng = np.random.default_rng(2)
    tree = {"a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": [jnp.arange(5, dtype=jnp.int32),
            jnp.asarray(rng.normal(size=(2,)), jnp.bfloat16)], "c": jnp.asarray(rng.normal(size=()), jnp.float32),
            "k": jax.random.key(3)}
    packing = StatePacking(jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree))
    packed = jax.jit(packing.pack)(tree)
    assert sorted(packed) == sorted({"float32", "int32", "bfloat16", str(tree["k"].dtype)})
    assert packed["float32"].shape == (13,)
    back = jax.jit(packing.unpack)(packed)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
        assert got.dtype == want.dtype and got.shape == want.shape
        if jnp.issubdtype(want.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_the_parameters_are_packed_as_optax_flatten_ravels_them():
    """The ``"params"`` buffer is the vector optax.flatten makes of the parameters (twelve
    layers: list keys 10 and 11 sort after 9), the BatchNorm statistics and moments go by
    dtype, and ``pack(params=...)`` puts a given vector in its place."""
    from flax import nnx
    from vertex_jax.train.packing import PARAMS

    model = nnx.Sequential(*(m for _ in range(6) for m in (nnx.Linear(3, 3, rngs=nnx.Rngs(1)),
                                                           nnx.BatchNorm(3, rngs=nnx.Rngs(1)))))
    optimizer = nnx.Optimizer(model, optax.flatten(optax.adam(1e-3)), wrt=nnx.Param)
    state = nnx.state((model, optimizer))
    packing = StatePacking(state)
    packed = jax.jit(packing.pack)(state)
    flat_params = jnp.concatenate([jnp.ravel(p) for p in jax.tree.leaves(nnx.as_pure(nnx.state(model, nnx.Param)))])
    np.testing.assert_array_equal(packed[PARAMS], flat_params)
    assert packed["float32"].size == 6 * 2 * 3 + 2 * flat_params.size  # statistics, mu, nu
    moved = packed[PARAMS] + 1.0
    back = packing.unpack(packing.pack(state, params=moved))
    for got, want in zip(jax.tree.leaves(nnx.state(back, nnx.Param)), jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(got, want + 1.0)
    np.testing.assert_array_equal(jax.tree.leaves(nnx.state(back, nnx.BatchStat))[0],
                                  jax.tree.leaves(nnx.state(model, nnx.BatchStat))[0])


def test_flattened_adam_makes_the_same_updates():
    """``optim.flatten``: optax.flatten around the same chain; float32 rounding apart
    (the clipping norm sums in another order), the same three updates."""
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-4))
    results = []
    for tx in (chain, optax.flatten(chain)):
        p, state = params, tx.init(params)
        for step in range(3):
            grads = jax.tree.map(lambda a: a * (step + 1) + 0.1, p)
            updates, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        results.append(p)
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(jax.tree.leaves(optax.flatten(chain).init(params))) < len(jax.tree.leaves(chain.init(params)))


def test_xla_presets_never_override_the_users_flags():
    env = {"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true --xla_dump_to=/tmp/x"}
    flags = apply_preset("fast-compile", env).split()
    assert "--xla_gpu_enable_triton_gemm=true" in flags and "--xla_dump_to=/tmp/x" in flags
    assert "--xla_gpu_enable_triton_gemm=false" not in flags
    assert len(flags) == 2
    assert apply_preset("default", {}) == ""
    with pytest.raises(ValueError, match="xla_preset"):
        apply_preset("turbo", {})
    assert set(PRESETS) >= {"default", "fast-compile", "no-autotune"}
    # Presets join with "+": every flag of each, once, a later preset's value winning.
    joined = apply_preset("fast-compile-graphs+fast-compile-no-excess-precision", {}).split()
    assert sorted(joined) == sorted(["--xla_gpu_enable_triton_gemm=false", "--xla_gpu_graph_min_graph_size=2",
                                     "--xla_allow_excess_precision=false"])
    assert apply_preset("default+no-autotune", {}) == " ".join(PRESETS["no-autotune"])
    with pytest.raises(ValueError, match="xla_preset"):
        apply_preset("fast-compile+turbo", {})


def _record(images_per_s: float, spread: float) -> dict:
    return {"status": "ok", "record": {"images_per_s": images_per_s, "run_spread": spread}}


def test_every_presets_flags_are_known_to_the_installed_xla():
    """XLA aborts on a flag it does not know ("Unknown flag in XLA_FLAGS"), and XLA:CPU
    parses the GPU flags too: a typo in a preset would cost a lent GPU's whole run."""
    import subprocess
    import sys

    flags = sorted({flag for preset in PRESETS.values() for flag in preset})
    proc = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(1).block_until_ready()"],
                          env={**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bogus = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(1).block_until_ready()"],
                           env={**os.environ, "XLA_FLAGS": "--xla_gpu_no_such_flag=1", "JAX_PLATFORMS": "cpu"},
                           capture_output=True, text=True, timeout=120)
    assert bogus.returncode != 0 and "Unknown flag" in bogus.stderr


def test_the_combination_takes_the_levers_that_beat_the_baseline_by_more_than_the_spread():
    points = [Point("base", "jax"), Point("base-warm", "jax"),
              Point("a", "jax", lever=True, overrides={"model.padding": "symmetric"}),
              Point("b", "jax", lever=True, xla="no-autotune"),
              Point("c", "jax", lever=True, overrides={"pack_state": True}),
              Point("d", "jax", lever=True, xla="fast-compile-graphs"),
              Point("combo", "combo")]
    results = {"base": _record(50, 0.0), "base-warm": _record(100, 0.02), "a": _record(101.5, 0.01),
               "b": _record(110, 0.01), "c": _record(104, 0.03), "d": _record(99, 0.01)}
    verdicts = lever_verdicts(points, results, "base")
    assert verdicts["a"]["ratio"] == pytest.approx(1.015)  # against the warm rerun
    assert verdicts["a"]["peak_bytes"] is None and verdicts["a"]["plan_bytes"] is None
    results["c"]["record"].update(peak_bytes=7, xla_memory_bytes=5)
    results["base-warm"]["record"].update(peak_bytes=9, xla_memory_bytes=8)
    memory = ("peak_bytes", "plan_bytes", "baseline_peak_bytes", "baseline_plan_bytes")
    assert [lever_verdicts(points, results, "base")["c"][k] for k in memory] == [7, 5, 9, 8]
    assert {k: v["wins"] for k, v in verdicts.items()} == {"a": False, "b": True, "c": True, "d": False}
    combo = combine_levers(points[-1], verdicts)
    assert combo.kind == "jax" and combo.xla == "no-autotune" and combo.overrides == {"pack_state": True}
    results["d"] = _record(108, 0.01)  # two winning presets: both, joined
    assert combine_levers(points[-1], lever_verdicts(points, results, "base")).xla == "no-autotune+fast-compile-graphs"
    assert lever_verdicts(points, {}, "base") == {}


def test_the_packed_step_makes_the_same_step_as_the_unpacked_one():
    """``pack_state`` with flat Adam moments: the packed step updates the parameter vector
    as one array (``updates_flat``), the unpacked one through optax.flatten per parameter.
    Tiny model, one step on one device (the GPU check's machine; the step on four devices
    against one: tests/test_step.py): every array of the new state equal to float32
    rounding (the same elementwise Adam on the same vector; only the clipping norm sums in
    another order)."""
    from vertex_jax import mesh as meshlib
    from vertex_jax.bench.measure import _initial_state, abstract_state, make_step, random_batch
    from vertex_jax.config_files import load_config
    from vertex_jax.train.step import updates_flat

    config = load_config("configs/xray.py:tiny")
    config.augment.enabled = False  # packing is about the state: a smaller program to compile
    config.optim.flatten = "true"
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), (meshlib.DATA,))
    config.batch_size = 2
    graphdef, _, _ = abstract_state(config)
    batch = meshlib.to_global(random_batch(config, config.batch_size), mesh)
    initial = _initial_state(config, mesh)
    states = []
    packed_layout = StatePacking(initial)
    assert updates_flat(config, packed_layout)
    for packing in (None, packed_layout):
        state = jax.tree.map(jnp.copy, initial)  # the step donates its state
        if packing is not None:
            state = jax.jit(packing.pack)(state)
        # LLVM at -O0: the same program, compiled twice as fast
        step = make_step(config, "train", graphdef, mesh, packing).lower(state, batch).compile(
            {"xla_backend_optimization_level": 0})
        state, metrics = step(state, batch)
        states.append(packing.unpack(state) if packing is not None else state)
        assert bool(metrics["finite"])
    for a, b in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[1])):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-6)


def test_auto_settings_pick_the_faster_form_per_platform(monkeypatch):
    """``pack_state`` and ``model.batchnorm`` default to auto: the GPU form on
    accelerators, the plain one on CPUs (these tests run on CPU)."""
    from vertex_jax.auto_setting import assume_accelerator
    from vertex_jax.models import batchnorm
    from vertex_jax.train.packing import pack_state_enabled

    assert jax.default_backend() == "cpu"
    def setting(value):
        return SimpleNamespace(pack_state=value)

    assert pack_state_enabled(setting("auto")) is False and pack_state_enabled(load_config("xray")) is False
    assert pack_state_enabled(setting(True)) and pack_state_enabled(setting("true"))
    assert not pack_state_enabled(setting("false"))
    with pytest.raises(ValueError, match="pack_state"):
        pack_state_enabled(setting("sometimes"))
    calls = []
    monkeypatch.setattr(batchnorm, "fused_batch_norm",
                        lambda *a: calls.append(1) or fused_batch_norm(*a))
    bn = BatchNorm(3, act=False, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 4, 3)), jnp.float32)
    assert bn.impl == "auto"
    auto = bn(x)
    assert calls == []  # autodiff form on CPU
    set_bn_impl(bn, "fused")
    np.testing.assert_allclose(bn(x), auto, rtol=1e-5, atol=1e-5)
    assert calls == [1]
    # Compiling for a GPU that is not here (bench --what=compile --target): the GPU forms.
    set_bn_impl(bn, "auto")
    assume_accelerator(True)
    try:
        assert pack_state_enabled(setting("auto")) and not pack_state_enabled(setting("false"))
        bn(x)
        assert calls == [1, 1]
    finally:
        assume_accelerator(None)
    assert pack_state_enabled(setting("auto")) is False


def _reductions(jaxpr) -> int:
    """reduce_sum equations of a jaxpr, its sub-jaxprs (remat, custom derivatives) included."""
    from jax._src import core
    return sum(1 if e.primitive.name == "reduce_sum" else 0 for e in jaxpr.eqns) + sum(
        _reductions(sub) for e in jaxpr.eqns for sub in core.jaxprs_in_params(e.params))


def test_the_evaluation_pool_recomputed_behind_a_barrier_is_the_same_function(accelerator_form):
    """``model.se_pool``: in evaluation, ``recompute`` pools BatchNorm + swish computed again
    from the depthwise output behind one optimization barrier per block, ``shared`` pools
    the activation, ``auto`` is ``recompute`` in the accelerator form only, and training
    never recomputes. The outputs and the input gradient (saliency) agree: the same
    float32 operations on the same values, the pools summed maybe in another order, which
    moves a pool of n <= 512 values by at most n * 2^-24 of its magnitude; 1e-4 of the
    largest output is far above what that can do and far below a wrong activation."""
    from vertex_jax.errors import ConfigError
    from vertex_jax.models.efficientnet import EfficientNet

    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(2, 64, 32, 3)), jnp.float32)
    net = EfficientNet("tiny", num_classes=3, depthwise="conv", rngs=nnx.Rngs(0))
    for _, m in nnx.iter_modules(net):  # running statistics away from (0, 1)
        if isinstance(m, BatchNorm):
            m.mean[...] = jnp.asarray(rng.normal(0, 0.2, m.mean.shape), jnp.float32)
            m.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, m.var.shape), jnp.float32)
    blocks = sum(1 for _ in net.blocks())

    def run(pool: str, train: bool = False):
        set_se_forms(net, pool=pool)
        net.train() if train else net.eval()
        graphdef, state = nnx.split(net)

        def forward(images, st=state):
            return nnx.merge(graphdef, st)(images)
        barriers = str(jax.make_jaxpr(lambda i, st: forward(i, st))(x, state)).count("optimization_barrier")
        out = jax.jit(forward)(x) if not train else None
        grad = None if train else jax.jit(jax.grad(lambda i: jnp.sum(forward(i)[:, 0])))(x)
        return barriers, out, grad

    shared, recomputed = run("shared"), run("recompute")
    assert shared[0] == 0 and recomputed[0] == blocks
    assert run("auto")[0] == (blocks if accelerator_form else 0)
    assert run("recompute", train=True)[0] == 0
    tol = 1e-4 * float(jnp.max(jnp.abs(shared[1])))
    np.testing.assert_allclose(recomputed[1], shared[1], rtol=0, atol=tol)
    np.testing.assert_allclose(recomputed[2], shared[2], rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(shared[2]))))
    assert float(jnp.max(jnp.abs(shared[1]))) > 0 and float(jnp.max(jnp.abs(shared[2]))) > 0
    with pytest.raises(ConfigError, match="model.se_pool"):
        set_se_forms(net, pool="sometimes")


@pytest.mark.parametrize("impl", ["fused", "autodiff"])
def test_elementwise_recompute_keeps_about_half_and_trains_the_same_network(impl):
    """``model.recompute=elementwise``: the same loss, gradients and running statistics as
    keeping everything (tiny EfficientNet, float32, training mode with drop-connect), with
    about half the saved activations, and no reduction recomputed in the backward pass
    (statistics and squeeze-excitation pools are kept). With ``recompute_stages=2`` only
    the first two stages recompute: the same network again, keeping less than everything
    and more than all stages recomputed.

    Tolerance: 1e-3 of the largest gradient. The recomputation repeats the same float32
    operations, which XLA may fuse and so round differently; that rounding, compounded
    through the network, stays orders of magnitude below it (5e-7 of the largest gradient
    measured here, 5e-5 with a policy that changes the fusions). A wrong recomputation
    (another drop-connect mask, other statistics, a lost gradient term) moves gradients
    by their own size."""
    from flax.nnx import traversals
    from vertex_jax.errors import ConfigError
    from vertex_jax.models.efficientnet import STAGES, EfficientNet
    from vertex_jax.models.summary import activation_bytes_per_image

    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 64, 32, 3)), jnp.float32)
    runs = {}
    for recompute, stages in (("none", STAGES), ("elementwise", STAGES), ("elementwise", 2)):
        net = EfficientNet("tiny", num_classes=4, recompute=recompute, recompute_stages=stages,
                           depthwise="conv", rngs=nnx.Rngs(0))
        set_bn_impl(net, impl)
        net.train()

        def loss(m):
            return jnp.sum(jnp.square(m(x)))
        value, grads = nnx.jit(nnx.value_and_grad(loss))(net)
        graphdef, state = nnx.split(net)
        jaxpr = jax.make_jaxpr(jax.grad(lambda s: loss(nnx.merge(graphdef, s)), allow_int=True))(state)
        runs[recompute, stages] = dict(value=value, grads=traversals.flatten_mapping(nnx.to_pure_dict(grads)),
                                       stats=jax.tree.leaves(nnx.state(net, nnx.BatchStat)),
                                       reductions=_reductions(jaxpr.jaxpr),
                                       saved=activation_bytes_per_image(net, 64, 32))
    kept, recomputed, early = runs["none", STAGES], runs["elementwise", STAGES], runs["elementwise", 2]
    assert recomputed["saved"] < 0.6 * kept["saved"]  # 0.55 here; 0.44 for B4 at 1024x512
    assert recomputed["saved"] < early["saved"] < kept["saved"]
    g_max = max(float(jnp.max(jnp.abs(g))) for g in kept["grads"].values())
    tol = 1e-3
    for run in (recomputed, early):
        assert run["reductions"] == kept["reductions"]
        assert abs(float(run["value"] - kept["value"])) <= tol * float(kept["value"])
        for name, g in kept["grads"].items():
            np.testing.assert_allclose(run["grads"][name], g, rtol=0, atol=tol * g_max, err_msg=str(name))
        for a, b in zip(run["stats"], kept["stats"]):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    with pytest.raises(ConfigError, match="model.recompute"):
        EfficientNet("tiny", recompute="some", rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="model.remat"):
        EfficientNet("tiny", remat=True, recompute="elementwise", rngs=nnx.Rngs(0))
    for stages in (0, STAGES + 1):
        with pytest.raises(ConfigError, match="model.recompute_stages"):
            EfficientNet("tiny", recompute="elementwise", recompute_stages=stages, rngs=nnx.Rngs(0))


def _filled(leaf, rng):
    """An array for the abstract ``leaf``: random normal (``rng``) or zero, a fixed key."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    if rng is None:
        return jnp.zeros(leaf.shape, leaf.dtype)
    return jnp.asarray(rng.normal(size=leaf.shape), leaf.dtype)


def test_flat_moments_are_the_per_parameter_moments_concatenated():
    """``optim.flatten``: after the same updates (the optimizer training builds, random
    gradients), the flat state converted to the layout checkpoints keep
    (``MomentLayout.to_saved``) equals the state updated per parameter (float32 rounding:
    the same elementwise Adam), and ``from_saved`` gives the flat state back exactly; the
    flat moment is ``ravel_pytree`` of the per-parameter one (an independent ordering).
    With frozen stages and accumulated gradients, whose optimizer states nest the flat one
    (the plain case: tests/test_train.py, a resumed run)."""
    from jax.flatten_util import ravel_pytree
    from vertex_jax.bench.measure import STEPS_PER_EPOCH
    from vertex_jax.train.moments import MomentLayout
    from vertex_jax.train.state import model_and_optimizer

    states = {}
    for flat in (True, False):
        config = load_config("configs/xray.py:tiny")
        config.optim.flatten = str(flat).lower()
        config.optim.update(freeze_stages=1, grad_accum=2)  # two updates: one of Adam
        graphdef, params, rest = nnx.split(
            nnx.eval_shape(lambda: model_and_optimizer(config, STEPS_PER_EPOCH, seed=0)), nnx.Param, ...)
        rng = np.random.default_rng(7)  # the same random parameters for both, the rest zero
        model, optimizer = nnx.merge(graphdef, jax.tree.map(lambda a: _filled(a, rng), params),
                                     jax.tree.map(lambda a: _filled(a, None), rest))
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype),
                             nnx.state(model, nnx.Param))
        update = nnx.jit(lambda o, m, g: o.update(m, g))
        for _ in range(2):
            update(optimizer, model, grads)
        states[flat] = nnx.split((model, optimizer))[1]
    layout = MomentLayout.of(config, STEPS_PER_EPOCH)
    saved = layout.to_saved(states[True])
    assert jax.tree.structure(saved) == jax.tree.structure(states[False])
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(states[False])):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5, atol=1e-6)
    back = layout.from_saved(saved)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(states[True])):
        if not jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            np.testing.assert_array_equal(a, b)
    flat_leaves = {jax.tree_util.keystr(p): v for p, v in
                   jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(states[True]))[0]}
    mus = [k for k in flat_leaves if k.endswith("['mu']")]
    assert mus and all(flat_leaves[k].ndim == 1 and float(jnp.max(jnp.abs(flat_leaves[k]))) > 0 for k in mus)
    saved_pure = nnx.to_pure_dict(saved)
    for key in mus:
        node = saved_pure
        for part in key.strip("[]").split("]["):
            node = node[part.strip("'")] if part.startswith("'") else node[int(part)]
        np.testing.assert_array_equal(ravel_pytree(node)[0], flat_leaves[key])


def test_every_gpu_check_point_sets_existing_fields_to_values_the_model_accepts():
    """A typo in a point's override would only show on a lent GPU: each field must exist in
    the config, and the model (tiny, abstract) must build with the point's values."""
    from vertex_jax.bench.gpu_points import plan
    from vertex_jax.bench.plain_config import point_config
    from vertex_jax.models.build import build_model

    settings = {tuple(sorted(p.overrides.items())) for p in plan(dry=False) if p.overrides}
    assert len(settings) > 5
    for overrides in settings:
        config = point_config("configs/xray.py:tiny", batch=2, remat=False, dtype="bfloat16",
                              overrides=dict(overrides))
        nnx.eval_shape(lambda: build_model(config, seed=0))


@pytest.mark.parametrize("dry", [False, True])
def test_the_loop_point_follows_the_steps_it_loads_from_the_cache(dry):
    """The loop point's training step is the baseline's and its validation runs at the
    evaluation point's batch (gpu_check._run_loop_point): both must be measured before it,
    under its XLA preset and in its cache, or the loop compiles them cold."""
    from vertex_jax.bench.gpu_points import BASELINE, plan

    points = plan(dry=dry)
    names = [p.name for p in points]
    loops = [p for p in points if p.kind == "loop"]
    # the loop, then the loop with the step dispatched from its own thread (the same step)
    assert [p.overrides for p in loops] == [{}, {"dispatch_thread": True}]
    # enough timed steps for a stall every logging period to show, within one epoch of the
    # isolated step's schedule
    from vertex_jax.bench.gpu_check import LOOP_STEPS
    from vertex_jax.bench.loop import periodic_stall
    from vertex_jax.bench.measure import STEPS_PER_EPOCH
    period = load_config("configs/xray.py").log_every_steps
    assert periodic_stall([0.1] * (LOOP_STEPS - 1), period) is not None and LOOP_STEPS + 2 <= STEPS_PER_EPOCH
    for loop in loops:
        for name in (BASELINE.format(batch=loop.batch), f"jax-eval-b{4 * loop.batch}"):
            before = points[names.index(name)]
            assert names.index(name) < names.index(loop.name), name
            assert (before.xla, before.cache, before.batch in (loop.batch, 4 * loop.batch)) == (loop.xla, loop.cache, True)
            assert not before.overrides and not before.remat

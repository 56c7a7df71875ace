"""EfficientNet and VertexNet: structure, parameter counts, dtypes, train/eval, gradients, clinical mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vertex_jax.models import VARIANTS, EfficientNet, VertexNet, block_specs, normalize_input
from vertex_jax.models.batchnorm import BatchNorm
from vertex_jax.models.efficientnet import round_filters

# Parameter counts with a 1000-class head, as timm reports for tf_efficientnet_b0..b7.
PARAMS = {"b0": 5_288_548, "b1": 7_794_184, "b2": 9_109_994, "b3": 12_233_232,
          "b4": 19_341_616, "b5": 30_389_784, "b6": 43_040_704, "b7": 66_347_960}
CONFIG = dict(variant="b0", tasks=("pvf", "osteo"), in_channels=1)
B, H, W = 4, 64, 32


def _count(model: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _leaves(model: nnx.Module) -> list[np.ndarray]:
    return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
            for x in jax.tree.leaves(nnx.state(model))]


def _like(net: VertexNet, **overrides) -> VertexNet:
    """A VertexNet with other static settings (dtype, remat), the same state and the same mode."""
    other = nnx.eval_shape(lambda: VertexNet(**{**CONFIG, **overrides}, rngs=nnx.Rngs(0)))
    nnx.update(other, nnx.clone(nnx.state(net)))
    if net.backbone.stem_bn.use_running_average:
        other.eval()
    return other


@nnx.jit
def _run(net, image, clinical, mask):
    return net(image, clinical, mask, return_features=True)


def _logits(net, *batch) -> np.ndarray:
    return np.asarray(_run(net, *batch)[0])


@pytest.fixture(scope="module")
def net() -> VertexNet:
    model = VertexNet(**CONFIG, rngs=nnx.Rngs(0))
    model.eval()
    return model


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    image = jnp.asarray(rng.integers(0, 256, (B, H, W, 1), dtype=np.uint8))
    clinical = jnp.asarray(rng.normal(size=(B, 3)), jnp.float32)
    mask = jnp.ones((B, 3), jnp.float32).at[1, 2].set(0.0).at[3, 0].set(0.0)
    clinical = clinical * mask
    return image, clinical, mask


@pytest.fixture(scope="module")
def trained(net, batch):
    """Train-mode copy of `net` (batch statistics, dropout on) and its output on `batch`."""
    model = nnx.clone(net)
    model.train()
    before = nnx.clone(model)           # same RNG state as `model` before the call
    logits, feats = _run(model, *batch)
    return before, model, np.asarray(logits), np.asarray(feats)


@pytest.mark.parametrize("variant", sorted(PARAMS))
def test_variant_parameter_counts(variant):
    model = nnx.eval_shape(lambda: EfficientNet(variant, rngs=nnx.Rngs(0)))
    assert _count(model) == PARAMS[variant]


@pytest.mark.parametrize("variant", ["b0", "b4", "b7"])  # the extremes and the paper's; a trace is seconds each
def test_variant_output_shapes(variant):
    model = nnx.eval_shape(lambda: EfficientNet(variant, rngs=nnx.Rngs(0)))
    width = VARIANTS[variant].width
    logits, feats = jax.eval_shape(lambda m, x: m(x, return_features=True), model,
                                   jax.ShapeDtypeStruct((2, 70, 50, 3), jnp.float32))
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    assert feats.shape == (2, 3, 2, round_filters(1280, width))


def test_b4_matches_the_reference_layout():
    specs = block_specs("b4")
    assert [len(s) for s in specs] == [2, 4, 4, 6, 6, 8, 2]
    assert [s[-1].out_channels for s in specs] == [24, 32, 56, 112, 160, 272, 448]
    assert [s[0].kernel for s in specs] == [3, 3, 5, 3, 5, 5, 3]
    assert [s[0].stride for s in specs] == [1, 2, 2, 2, 1, 2, 1]
    blocks = [b for s in specs for b in s]
    assert blocks[0].drop_rate == 0.0 and blocks[-1].drop_rate == pytest.approx(0.2 * 31 / 32)
    assert all(b.se_channels == int(b.in_channels * 0.25) for b in blocks)
    assert round_filters(32, 1.4) == 48 and round_filters(1280, 1.4) == 1792


def test_batchnorm_gradients_match_plain_jax():
    bn = BatchNorm(8, act=True, dtype=jnp.float32, rngs=nnx.Rngs(0))
    bn.scale[...] = jnp.linspace(0.5, 1.5, 8)
    bn.bias[...] = jnp.linspace(-1.0, 1.0, 8)
    graphdef, params, rest = nnx.split(bn, nnx.Param, ...)
    weights = jnp.arange(8.0)

    def ours(p, x):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, p, rest, copy=True)(x)) * weights)

    def plain(p, x):
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
        y = (x - mean) / jnp.sqrt(var + 1e-3) * p["scale"][...] + p["bias"][...]
        return jnp.sum(jnp.sin(jax.nn.silu(y)) * weights)

    x = jax.random.normal(jax.random.key(1), (2, 5, 3, 8)) * 3.0 + 1.0
    np.testing.assert_allclose(ours(params, x), plain(params, x), rtol=1e-6)
    got = jax.jit(jax.grad(ours, argnums=(0, 1)))(params, x)
    want = jax.jit(jax.grad(plain, argnums=(0, 1)))(params, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_same_seed_same_model_and_outputs(net, batch):
    twin = VertexNet(**CONFIG, rngs=nnx.Rngs(0))
    twin.eval()
    for a, b in zip(_leaves(net), _leaves(twin)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_logits(net, *batch), _logits(twin, *batch))
    other = VertexNet(**CONFIG, rngs=nnx.Rngs(1))
    assert not np.array_equal(net.backbone.stem_conv.kernel[...], other.backbone.stem_conv.kernel[...])


def test_shapes_dtypes_and_input_scaling(net, batch):
    image, clinical, mask = batch
    logits, feats = _run(net, image, clinical, mask)
    assert logits.shape == (B, 2) and logits.dtype == jnp.float32
    assert feats.shape == (B, 2, 1, 1280)
    # uint8 0..255 and float 0..1 are the same image.
    np.testing.assert_allclose(_logits(net, image.astype(jnp.float32) / 255.0, clinical, mask), logits,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normalize_input(jnp.full((1, 1, 1, 1), 255, jnp.uint8)), (1 - 0.449) / 0.226,
                               rtol=1e-6)
    np.testing.assert_allclose(normalize_input(jnp.full((1, 1, 1, 1), 65535, jnp.uint16)),
                               (1 - 0.449) / 0.226, rtol=1e-6)


def test_features_give_the_logits_for_grad_cam(net, batch):
    image, clinical, mask = batch
    logits, feats = _run(net, image, clinical, mask)
    grad_cam = nnx.jit(lambda n, f, c, m: jax.value_and_grad(lambda f: n.classify(f, c, m)[:, 0].sum())(f))
    total, grad = grad_cam(net, feats, clinical, mask)
    np.testing.assert_allclose(total, logits[:, 0].sum(), rtol=1e-5, atol=1e-6)
    assert grad.shape == feats.shape and float(jnp.abs(grad).sum()) > 0


def test_eval_mode_is_deterministic_and_keeps_statistics(net, batch):
    model = nnx.clone(net)
    stats = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
    first, second = _logits(model, *batch), _logits(model, *batch)
    np.testing.assert_array_equal(first, second)
    jax.tree.map(np.testing.assert_array_equal, stats, jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat)))


def test_train_mode_updates_statistics_and_drops_out(net, batch, trained):
    before, model, first, _ = trained
    stats = jax.tree.map(np.asarray, nnx.state(before, nnx.BatchStat))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), stats,
                           nnx.state(model, nnx.BatchStat))
    assert all(jax.tree.leaves(changed))        # every BatchNorm moved its running statistics
    again = nnx.clone(model)
    assert not np.allclose(_logits(again, *batch), first)  # new dropout / drop-connect masks
    # The same RNG state gives the same masks: the randomness is the dropout streams.
    np.testing.assert_array_equal(_logits(nnx.clone(before), *batch), first)


def _loss(model, image, clinical, mask, labels):
    logits = model(image, clinical, mask)
    return jnp.mean(jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))


def test_gradients_reach_image_and_clinical_branches(net, batch):
    model = nnx.clone(net)
    model.train()
    labels = jnp.asarray([[0, 1], [1, 0], [1, 1], [0, 0]], jnp.float32)
    loss, grads = nnx.jit(nnx.value_and_grad(_loss))(model, *batch, labels)
    assert np.isfinite(float(loss))
    for layer in (grads["backbone"]["stem_conv"], grads["backbone"]["stages"][5][0]["dw_conv"],
                  grads["clinical"]["linears"][0], grads["image_projection"], grads["fusion"], grads["output"]):
        kernel = np.asarray(layer["kernel"][...])
        assert np.all(np.isfinite(kernel)) and np.abs(kernel).max() > 0


def test_missing_clinical_values_use_the_mask(net, batch):
    image, clinical, mask = batch
    base = _logits(net, image, clinical, mask)
    # A value whose mask is 0 is ignored, whatever the pipeline left in it...
    np.testing.assert_array_equal(_logits(net, image, clinical.at[1, 2].set(5.0), mask), base)
    # ...a present value matters...
    assert not np.allclose(_logits(net, image, clinical.at[1, 1].add(1.0), mask), base)
    # ...and so does being missing (the branch sees the mask).
    assert not np.allclose(_logits(net, image, clinical.at[0, 0].set(0.0), mask.at[0, 0].set(0.0)),
                           _logits(net, image, clinical.at[0, 0].set(0.0), mask))


def test_without_clinical_branch():
    model = nnx.eval_shape(lambda: VertexNet(**CONFIG, use_clinical=False, rngs=nnx.Rngs(0)))
    out = jax.eval_shape(lambda m, x: m(x, None, None), model,
                         jax.ShapeDtypeStruct((2, H, W, 1), jnp.uint8))
    assert model.clinical is None and out.shape == (2, 2) and out.dtype == jnp.float32


# bfloat16 keeps 8 significant bits: unit roundoff u = 2**-8.
BF16_U = 2.0 ** -8
# One block's bound, in units of u. A block rounds to bfloat16 about a dozen times in a
# row (input cast, each kernel cast, each convolution's and BatchNorm's output, the SE
# projections and gate, the skip sum) and every rounding adds at most u to its relative
# error; convolutions accumulate in float32, and the layers are well conditioned on
# activations the batch statistics keep normalised, so an error passes a layer about
# unchanged. 16u covers a block even with every rounding at its worst and ~k*k rounded
# depthwise taps adding like a random walk; observed: 0.5u to 2.5u. Each block gets the
# same (bfloat16) input in both dtypes, so the bound does not grow with depth.
BF16_BLOCK_BOUND = 16 * BF16_U


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@nnx.jit
def _stem(backbone, x):
    return backbone.stem_bn(backbone.stem_conv(x.astype(backbone.dtype)))


@nnx.jit
def _block(block, x):
    return block(x)


@nnx.jit
def _top(backbone, x):
    return backbone.head_bn(backbone.head_conv(x))


def test_bfloat16_close_to_float32(batch, trained):
    """bfloat16 compute against float32 with the same parameters, block by block: each block
    of both networks gets the bfloat16 network's previous output, in train mode (batch
    statistics) with the same dropout masks (both clones draw them in the same order). An
    end-to-end bound would compound over the ~20 blocks of a random network, with a size
    that depends on the machine's summation order; per block the error is bounded by a few
    roundings (``BF16_BLOCK_BOUND``)."""
    before, _, _, _ = trained
    half = _like(before, dtype=jnp.bfloat16)
    logits, feats = _run(nnx.clone(half), *batch)
    assert feats.dtype == jnp.bfloat16 and logits.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(half, nnx.Param, nnx.BatchStat)))

    full, half = nnx.clone(before).backbone, nnx.clone(half).backbone
    x = normalize_input(batch[0])
    errors = {"stem": _rel(_stem(half, x), _stem(full, x))}
    x = _stem(half, x)
    for i, (b32, b16) in enumerate(zip(full.blocks(), half.blocks())):
        y = _block(b16, x)
        errors[f"block {i}"] = _rel(y, _block(b32, x.astype(jnp.float32)))
        x = y
    errors["head"] = _rel(_top(half, x), _top(full, x.astype(jnp.float32)))
    assert len(errors) == 1 + len(list(full.blocks())) + 1
    worst = max(errors, key=errors.get)
    assert errors[worst] <= BF16_BLOCK_BOUND, (worst, {k: f"{v / BF16_U:.2f}u" for k, v in errors.items()})


def test_bfloat16_classifier_is_float32(net, batch):
    """After the backbone everything is float32: the bfloat16 network's logits are the
    float32 network's classifier applied to its (bfloat16) feature map, up to float32
    summation order (rtol 1e-4 is ~1000 float32 roundoffs; identical inputs and weights)."""
    half = _like(net, dtype=jnp.bfloat16)
    image, clinical, mask = batch
    logits, feats = _run(half, image, clinical, mask)
    classify = nnx.jit(lambda n, f, c, m: n.classify(f, c, m))
    np.testing.assert_allclose(logits, classify(nnx.clone(net), feats.astype(jnp.float32), clinical, mask),
                               rtol=1e-4, atol=1e-5)


def test_remat_gives_the_same_outputs_and_statistics(batch, trained):
    before, model, logits, feats = trained
    remat = _like(before, remat=True)
    got_logits, got_feats = _run(remat, *batch)
    np.testing.assert_allclose(got_logits, logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_feats, feats, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(nnx.state(remat, nnx.BatchStat)), jax.tree.leaves(nnx.state(model, nnx.BatchStat))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Differentiable through the rematerialised blocks (traced only; the memory saving is in
    # test_models_summary).
    grads = nnx.eval_shape(nnx.grad(_loss), remat, *batch, jnp.ones((B, 2)))
    assert grads["backbone"]["stem_conv"]["kernel"].shape == remat.backbone.stem_conv.kernel.shape


def test_bad_arguments_are_named(net, batch):
    image, clinical, mask = batch
    with pytest.raises(ValueError, match=r"1 channel\(s\), got shape \(4, 64, 32, 3\)"):
        net(jnp.repeat(image, 3, axis=-1), clinical, mask)
    with pytest.raises(ValueError, match=r"clinical_mask must have shape \(4, 3\), got \(4, 2\)"):
        net(image, clinical, mask[:, :2])
    with pytest.raises(ValueError, match=r"clinical must have shape \(4, 3\), got None"):
        net(image, None, mask)
    with pytest.raises(ValueError, match="tasks must be distinct names"):
        VertexNet(variant="b0", tasks=("pvf", "bmd"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown EfficientNet variant 'b9'"):
        EfficientNet("b9", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("size,stride,kernel", [((9, 7), 1, 3), ((9, 7), 2, 3), ((10, 8), 2, 5),
                                                ((11, 6), 2, 5)])
def test_depthwise_shifts_equal_the_grouped_convolution(size, stride, kernel):
    from vertex_jax.models.convolutions import depthwise_shifts

    x = jax.random.normal(jax.random.key(0), (2, *size, 6))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 1, 6))

    def grouped(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", feature_group_count=6,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    np.testing.assert_allclose(depthwise_shifts(x, w, stride), grouped(x, w), atol=1e-5)
    g_shift = jax.grad(lambda x, w: jnp.sum(depthwise_shifts(x, w, stride) ** 2), (0, 1))(x, w)
    g_conv = jax.grad(lambda x, w: jnp.sum(grouped(x, w) ** 2), (0, 1))(x, w)
    for a, b in zip(g_shift, g_conv):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_depthwise_implementations_give_the_same_network(batch):
    nets = {impl: VertexNet(variant="tiny", tasks=("pvf", "osteo"), depthwise=impl, rngs=nnx.Rngs(3))
            for impl in ("conv", "shifts")}
    for n in nets.values():
        n.eval()
    image, clinical, mask = batch
    np.testing.assert_allclose(nets["conv"](image, clinical, mask),
                               nets["shifts"](image, clinical, mask), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="depthwise impl"):
        VertexNet(variant="tiny", depthwise="fft", rngs=nnx.Rngs(0))

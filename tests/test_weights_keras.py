"""Keras weight import, checked against `keras.applications.EfficientNetB*` on the JAX backend.

The reference network gets random weights, and its BatchNorm statistics are calibrated on
the test batch (one training-mode pass with momentum 0; +0.05 on the variances so that
near-constant channels at the tiny final resolution do not amplify float32 rounding, which
would otherwise drown the comparison). It is saved with Keras, imported with our loader,
and features and logits must agree to a relative error (max |ours - keras| / max |keras|)
of at most 1e-5 in float32.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from parity import forward, rel_error

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")

from vertex_jax.models import (  # noqa: E402
    EfficientNet, VertexNet, WeightImportError, build_pretrained, load_pretrained, normalize_input,
)
from vertex_jax.models.efficientnet import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

if keras.backend.backend() != "jax":
    pytest.skip(f"Keras runs on {keras.backend.backend()}, these checks need the JAX backend",
                allow_module_level=True)

TOLERANCE = 1e-5
# Keras converts JAX arrays with np.array(x, copy=False) internally.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")


@dataclasses.dataclass
class KerasReference:
    weights: pathlib.Path        # Keras 3 .weights.h5
    legacy: pathlib.Path | None  # the same weights, legacy full-model .h5
    notop: pathlib.Path | None   # the same backbone saved from an include_top=False model
    image: np.ndarray            # uint8 [B, H, W, 3]
    features: np.ndarray         # top_activation
    logits: np.ndarray


def _randomise(model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.adapt_mean.assign(np.asarray(IMAGENET_MEAN, np.float32))
            layer.adapt_variance.assign(np.square(np.asarray(IMAGENET_STD, np.float32)))
            layer.count.assign(0)
            layer.finalize_state()
        elif isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.2, n).astype(np.float32))
            layer.moving_mean.assign(np.zeros(n, np.float32))
            layer.moving_variance.assign(np.ones(n, np.float32))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            shape = layer.kernel.shape
            fan_in = shape[0] * shape[1] if isinstance(layer, keras.layers.DepthwiseConv2D) \
                else int(np.prod(shape[:-1]))
            layer.kernel.assign(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32))
            if layer.use_bias:
                layer.bias.assign(rng.normal(0.0, 0.2, layer.bias.shape).astype(np.float32))
        else:
            assert not layer.weights, f"unhandled Keras layer with weights: {layer.name}"


def _uninitialised(variant: str, height: int, width: int, include_top: bool):
    """A Keras EfficientNet whose variables are not initialised yet (Keras would otherwise run
    one XLA compile per weight shape on CPU); the caller assigns every variable and then calls
    `keras.backend.clear_session()` to drop Keras' list of pending initialisations."""
    ctor = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    with keras.StatelessScope(initialize_variables=False):
        return ctor(weights=None, include_top=include_top, input_shape=(height, width, 3),
                    classifier_activation=None)


def keras_reference(variant: str, height: int, width: int, out_dir: pathlib.Path, *, batch: int = 2,
                    extra_files: bool = False, seed: int = 0, check_sensitivity: bool = True) -> KerasReference:
    """Random Keras reference (with a 1000-class head): weights file, input batch, outputs.
    `extra_files` also writes the same weights as legacy .h5 and as an include_top=False file;
    `check_sensitivity` asserts that the output depends on the input (so that the comparison
    is not vacuous; one more forward pass)."""
    model = _uninitialised(variant, height, width, include_top=True)
    rng = np.random.default_rng(seed)
    _randomise(model, rng)
    keras.backend.clear_session()

    net = keras.Model(model.input, [model.get_layer("top_activation").output, model.output])
    image = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    x = image.astype(np.float32)
    trainable = [v.value for v in net.trainable_variables]
    stats = [v.value for v in net.non_trainable_variables]
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    _, stats = jax.jit(lambda t, s, x: net.stateless_call(t, s, x, training=True))(trainable, stats, x)
    for layer in norms:
        layer.momentum = 0.99
    stats = [val + 0.05 if "moving_variance" in var.path else val
             for var, val in zip(net.non_trainable_variables, stats)]
    for var, val in zip(net.non_trainable_variables, stats):
        var.assign(val)

    evaluate = jax.jit(lambda t, s, x: net.stateless_call(t, s, x)[0])
    outs = [np.asarray(o) for o in evaluate(trainable, stats, x)]
    if check_sensitivity:
        other = evaluate(trainable, stats, rng.uniform(0, 255, x.shape).astype(np.float32))
        assert rel_error(other[0], outs[0]) > 1e-2

    weights = out_dir / f"{variant}_{height}x{width}.weights.h5"
    model.save_weights(weights)
    legacy = notop = None
    if extra_files:
        legacy = weights.with_name(f"{variant}_legacy.h5")
        model.save(legacy)
        backbone = _uninitialised(variant, height, width, include_top=False)
        for layer in backbone.layers:
            layer.set_weights(model.get_layer(layer.name).get_weights())
        keras.backend.clear_session()
        notop = weights.with_name(f"{variant}_notop.weights.h5")
        backbone.save_weights(notop)
    return KerasReference(weights, legacy, notop, image, outs[0], outs[1])


@nnx.jit
def _forward_scaled(net: EfficientNet, x: jax.Array):
    return net(x, return_features=True)


def _build(variant: str, path, **kwargs):
    net, report = build_pretrained(lambda r: EfficientNet(variant, **kwargs, rngs=r), path,
                                   rngs=nnx.Rngs(0))
    net.eval()
    return net, report


def _abstract(variant: str, **kwargs) -> EfficientNet:
    return nnx.eval_shape(lambda: EfficientNet(variant, **kwargs, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def b0_ref(tmp_path_factory) -> KerasReference:
    return keras_reference("b0", 96, 64, tmp_path_factory.mktemp("keras_b0"), extra_files=True)


@pytest.fixture(scope="module")
def b0_net(b0_ref):
    net, report = _build("b0", b0_ref.weights)
    assert report.format == "keras" and report.head_loaded and not report.stem_summed
    assert report.loaded == 311 and len(report.skipped) == 3
    assert all(k.startswith("normalization") for k in report.skipped)
    return net


def test_b0_non_square_matches_keras(b0_ref, b0_net):
    logits, feats = forward(b0_net, jnp.asarray(b0_ref.image))
    assert feats.shape == b0_ref.features.shape == (2, 3, 2, 1280)
    assert rel_error(feats, b0_ref.features) <= TOLERANCE
    assert rel_error(logits, b0_ref.logits) <= TOLERANCE


def test_legacy_h5_gives_the_same_model(b0_ref, b0_net):
    before = jax.tree.map(np.asarray, nnx.state(b0_net, nnx.Param))
    report = load_pretrained(b0_net, b0_ref.legacy)
    assert report.loaded == 311 and report.head_loaded
    after = jax.tree.map(np.asarray, nnx.state(b0_net, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    logits, feats = forward(b0_net, jnp.asarray(b0_ref.image))
    assert rel_error(feats, b0_ref.features) <= TOLERANCE
    assert rel_error(logits, b0_ref.logits) <= TOLERANCE


def test_b4_380_matches_keras(tmp_path):
    ref = keras_reference("b4", 380, 380, tmp_path, batch=1, check_sensitivity=False)
    net, report = _build("b4", ref.weights)
    assert report.loaded == 610
    logits, feats = forward(net, jnp.asarray(ref.image))
    assert feats.shape == (1, 12, 12, 1792)
    assert rel_error(feats, ref.features) <= TOLERANCE
    assert rel_error(logits, ref.logits) <= TOLERANCE


def test_grey_stem_equals_rgb_net_on_replicated_grey(b0_ref, b0_net):
    grey, report = _build("b0", b0_ref.weights, in_channels=1)
    assert report.stem_summed
    np.testing.assert_allclose(grey.stem_conv.kernel[...], b0_net.stem_conv.kernel[...].sum(axis=2, keepdims=True))
    x1 = normalize_input(jnp.asarray(b0_ref.image[..., :1]))   # grey uint8 -> channel-averaged scaling
    logits3, feats3 = _forward_scaled(b0_net, jnp.repeat(x1, 3, axis=-1))
    logits1, feats1 = _forward_scaled(grey, x1)
    assert rel_error(feats1, feats3) <= TOLERANCE
    assert rel_error(logits1, logits3) <= TOLERANCE


def test_notop_file_loads_backbone_and_skips_head(b0_ref):
    net, report = _build("b0", b0_ref.notop, num_classes=None)
    assert not report.head_loaded and report.loaded == 309
    pooled, feats = forward(net, jnp.asarray(b0_ref.image))
    assert rel_error(feats, b0_ref.features) <= TOLERANCE
    # A mean moves by no more than the largest change of its terms, so the pooled features
    # obey the feature map's bound (relative to the largest feature, not elementwise).
    pooled_error = np.abs(np.asarray(pooled, np.float64) - b0_ref.features.mean(axis=(1, 2), dtype=np.float64))
    assert pooled_error.max() <= TOLERANCE * np.abs(b0_ref.features).max()
    # A model with a (new) head keeps its own classifier; requiring the head is an error.
    headed = _abstract("b0", num_classes=3)
    report = load_pretrained(headed, b0_ref.notop)
    assert not report.head_loaded and report.loaded == 309
    assert isinstance(headed.classifier.kernel.get_value(), jax.ShapeDtypeStruct)
    with pytest.raises(WeightImportError, match=r"missing \(2\):\n    predictions/0  \(for classifier.kernel\)"):
        load_pretrained(headed, b0_ref.notop, load_head=True)


def test_top_file_into_headless_or_new_head(b0_ref):
    headless = _abstract("b0", num_classes=None)
    report = load_pretrained(headless, b0_ref.weights)
    assert not report.head_loaded and {"predictions/0", "predictions/1"} <= set(report.skipped)
    with pytest.raises(WeightImportError, match="no classifier"):
        load_pretrained(headless, b0_ref.weights, load_head=True)
    new_head = _abstract("b0", num_classes=2)
    assert not load_pretrained(new_head, b0_ref.weights).head_loaded
    with pytest.raises(WeightImportError, match=r"mis-shaped \(2\):\n    predictions/0: file \(1280, 1000\)"):
        load_pretrained(new_head, b0_ref.weights, load_head=True)


def test_vertexnet_backbone_from_keras(b0_ref):
    def make(rngs):
        return VertexNet(variant="b0", tasks=("pvf", "osteo"), in_channels=1, rngs=rngs)
    net, report = build_pretrained(make, b0_ref.notop, rngs=nnx.Rngs(0), backbone=lambda n: n.backbone)
    assert report.stem_summed and not report.head_loaded
    with h5py.File(b0_ref.notop) as f:
        stem = [g for g in f["layers"].values() if g["vars"].attrs.get("name") == "stem_conv"][0]["vars"]["0"][()]
    np.testing.assert_allclose(net.backbone.stem_conv.kernel[...], stem.sum(axis=2, keepdims=True), rtol=1e-6)
    # Parts not in the file are initialised for real.
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(nnx.state(net)))
    assert float(jnp.abs(net.fusion.kernel[...]).sum()) > 0
    net.eval()
    image = jnp.asarray(b0_ref.image[..., :1])
    logits = nnx.jit(lambda n, x, c, m: n(x, c, m))(net, image, jnp.zeros((2, 3)), jnp.ones((2, 3)))
    assert logits.shape == (2, 2) and bool(jnp.all(jnp.isfinite(logits)))


def test_wrong_variant_lists_missing_tensors(b0_ref):
    with pytest.raises(WeightImportError) as err:
        load_pretrained(_abstract("b1"), b0_ref.weights)
    text = str(err.value)
    assert "into EfficientNet-b1" in text and "missing (" in text
    assert "block2c_expand_conv/0  (for stages.1.2.expand_conv.kernel)" in text
    assert "does the file hold EfficientNet-b1 weights?" in text


def test_unexpected_and_misshaped_tensors_are_listed(b0_ref, tmp_path):
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b0_ref.weights.read_bytes())
    with h5py.File(broken, "r+") as f:
        extra = f["layers"].create_group("extra_dense/vars")
        extra.attrs["name"] = "extra_dense"
        extra["0"] = np.zeros((4, 4), np.float32)
        bn = [g for g in f["layers"].values() if g["vars"].attrs.get("name") == "block3a_bn"][0]["vars"]
        del bn["2"]
        bn["2"] = np.zeros(7, np.float32)
    model = _abstract("b0")
    with pytest.raises(WeightImportError) as err:
        load_pretrained(model, broken)
    text = str(err.value)
    assert "unexpected (1):\n    extra_dense/0" in text
    assert "mis-shaped (1):\n    block3a_bn/2: file (7,)" in text and "stages.2.0.dw_bn.mean expects (144,)" in text
    assert "missing" not in text
    # Nothing was written: the model is still abstract.
    assert isinstance(model.stages[2][0].dw_bn.mean.get_value(), jax.ShapeDtypeStruct)


def test_two_channel_stem_is_misshaped(b0_ref):
    with pytest.raises(WeightImportError, match=r"stem_conv/0: file \(3, 3, 3, 32\)"):
        load_pretrained(_abstract("b0", in_channels=2), b0_ref.weights)

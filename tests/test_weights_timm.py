"""timm `tf_efficientnet_b*` state-dict import, checked against timm itself (needs torch + timm).

As for Keras, the reference gets random weights and BatchNorm statistics calibrated on the
test batch (+0.05 on the variances), is saved (.safetensors and .pth), imported with our
loader, and features and logits must agree to a relative error of at most 1e-5 in float32.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from parity import forward, rel_error

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from vertex_jax.models import (  # noqa: E402
    EfficientNet, WeightImportError, build_pretrained, load_pretrained, normalize_input,
)

TOLERANCE = 1e-5
_LIBRARIES = []  # keeps operator-schema registrations alive


def _torchvision_ops_load(spec) -> bool:
    for folder in spec.submodule_search_locations or []:
        for lib in pathlib.Path(folder).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return True  # no compiled ops shipped: nothing to work around


def _import_timm():
    """timm, or skip the module.

    timm imports torchvision. A CUDA build of torchvision next to a CPU-only torch cannot load
    its compiled operators, and torchvision's Python side then fails while registering fake
    kernels for `torchvision::nms` / `qnms`. Declaring those two operator schemas lets it
    import; EfficientNet uses no torchvision operator, and timm's network code is untouched.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is not None and not _torchvision_ops_load(spec):
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _LIBRARIES.append(lib)
    return pytest.importorskip("timm")


timm = _import_timm()


@dataclasses.dataclass
class TimmReference:
    safetensors: pathlib.Path
    pth: pathlib.Path
    state_dict: dict
    image: np.ndarray      # uint8 [B, H, W, 3]
    features: np.ndarray   # NHWC, after conv_head + bn2 + swish
    logits: np.ndarray
    num_params: int


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def timm_reference(variant: str, height: int, width: int, out_dir: pathlib.Path, *, batch: int = 2,
                   seed: int = 0, check_sensitivity: bool = True) -> TimmReference:
    """Random timm reference saved to disk; `check_sensitivity` asserts that the output depends
    on the input (so that the comparison is not vacuous; one more forward pass)."""
    torch.manual_seed(seed)
    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False, drop_rate=0.0,
                              drop_path_rate=0.0)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    x = _nchw(np.asarray(normalize_input(jnp.asarray(image))))
    with torch.no_grad():
        for bn in norms:
            bn.weight.uniform_(0.5, 1.5, generator=generator)
            bn.bias.normal_(0.0, 0.2, generator=generator)
            bn.momentum = 1.0                      # running statistics := this batch's
        model.train()
        model(x)
        for bn in norms:
            bn.running_var += 0.05
            bn.momentum = 0.1
        model.eval()
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        features = feats.permute(0, 2, 3, 1).numpy()
        if check_sensitivity:
            other = model.forward_features(_nchw(rng.normal(0.0, 1.0, (batch, height, width, 3)).astype(np.float32)))
            assert rel_error(other.permute(0, 2, 3, 1).numpy(), features) > 1e-2
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    st, pth = out_dir / f"tf_{variant}.safetensors", out_dir / f"tf_{variant}.pth"
    safetensors_torch.save_file(state, st)
    torch.save(state, pth)
    return TimmReference(st, pth, state, image, features, logits.numpy(),
                         sum(p.numel() for p in model.parameters()))


def _build(variant: str, path):
    net, report = build_pretrained(lambda r: EfficientNet(variant, rngs=r), path, rngs=nnx.Rngs(0))
    net.eval()
    return net, report


@pytest.fixture(scope="module")
def b0_ref(tmp_path_factory) -> TimmReference:
    return timm_reference("b0", 97, 66, tmp_path_factory.mktemp("timm_b0"))


def test_b0_non_square_safetensors_and_pth_match_timm(b0_ref):
    net, report = _build("b0", b0_ref.safetensors)
    assert report.format == "timm" and report.head_loaded and report.loaded == 311
    assert report.skipped and all(k.endswith("num_batches_tracked") for k in report.skipped)
    logits, feats = forward(net, jnp.asarray(b0_ref.image))
    assert feats.shape == b0_ref.features.shape == (2, 4, 3, 1280)
    assert rel_error(feats, b0_ref.features) <= TOLERANCE
    assert rel_error(logits, b0_ref.logits) <= TOLERANCE

    before = jax.tree.map(np.asarray, nnx.state(net, nnx.Param, nnx.BatchStat))
    assert load_pretrained(net, b0_ref.pth).loaded == 311
    after = jax.tree.map(np.asarray, nnx.state(net, nnx.Param, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after)


def test_wrapped_pth_checkpoint_loads(b0_ref, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in b0_ref.state_dict.items()}, "epoch": 3}, path)
    model = nnx.eval_shape(lambda: EfficientNet("b0", rngs=nnx.Rngs(0)))
    assert load_pretrained(model, path).loaded == 311
    np.testing.assert_array_equal(model.head_conv.kernel[...],
                                  b0_ref.state_dict["conv_head.weight"].numpy().transpose(2, 3, 1, 0))


def test_b4_380_matches_timm(tmp_path):
    ref = timm_reference("b4", 380, 380, tmp_path, batch=1, check_sensitivity=False)
    net, report = _build("b4", ref.safetensors)
    assert report.loaded == 610
    assert sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.Param))) == ref.num_params == 19_341_616
    logits, feats = forward(net, jnp.asarray(ref.image))
    assert feats.shape == (1, 12, 12, 1792)
    assert rel_error(feats, ref.features) <= TOLERANCE
    assert rel_error(logits, ref.logits) <= TOLERANCE


def test_state_dict_problems_are_listed(b0_ref, tmp_path):
    state = dict(b0_ref.state_dict)
    del state["conv_head.weight"]
    state["blocks.2.0.bn2.running_mean"] = torch.zeros(5)
    state["extra.weight"] = torch.zeros(2, 2)
    path = tmp_path / "broken.safetensors"
    safetensors_torch.save_file(state, path)
    model = nnx.eval_shape(lambda: EfficientNet("b0", rngs=nnx.Rngs(0)))
    with pytest.raises(WeightImportError) as err:
        load_pretrained(model, path)
    text = str(err.value)
    assert "missing (1):\n    conv_head.weight  (for head_conv.kernel)" in text
    assert "unexpected (1):\n    extra.weight" in text
    assert "mis-shaped (1):\n    blocks.2.0.bn2.running_mean: file (5,) -> (5,), model stages.2.0.dw_bn.mean " \
           "expects (144,)" in text

"""The vertebra head (``model.vertebrae``): targets encoded on the device against the NumPy
reference, the warp the annotations share with the pixels, the head on the network (off: the
network as before), the masked losses, the data side, and a tiny run that trains and resumes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from vertex_jax.config_files import load_config
from vertex_jax.data.cache import Cache
from vertex_jax.data.prepare import synthetic_manifest_path
from vertex_jax.data.preprocess import Geometry, PreprocessConfig
from vertex_jax.errors import ConfigError, InputDataError, MissingInputError
from vertex_jax.models.build import build_model, vertebra_spec
from vertex_jax.models.vertebra_head import VertebraHead, vertebra_taps
from vertex_jax.synthetic.cohort import generate_cohort
from vertex_jax.train import vertebra_targets as vt
from vertex_jax.train.augment import AugmentConfig, augment_batch, example_keys, warp_params
from vertex_jax.train.vertebra_data import annotations_path, vertebra_tables
from vertex_jax.train.vertebra_loss import TERM_WEIGHTS, vertebra_loss, vertebra_losses
from vertex_jax.vertebrae import decode, slots as sl, targets as tg
from vertex_jax.vertebrae.annotations import Vertebra

REPO = Path(__file__).resolve().parents[1]
SPEC = tg.HeadSpec(canvas=(128, 64))


def _run(f, *args):
    """``f(*args)`` compiled without backend optimisation (it runs once: compiling is the cost)."""
    return jax.jit(f).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def _spine(seed: int = 0, at=(10.0, 8.0)) -> list[Vertebra]:
    """Six bodies down a small canvas (canvas pixels): one with a level outside T4-L4, one
    without points, one with only ``fractured``, the last two in one cell (the first wins)."""
    rng = np.random.default_rng(seed)
    out = []
    for k, level in enumerate(["T11", "T12", "L1", "C5", "L2", "L3"]):
        x0 = at[0] + rng.uniform(0, 6)
        y0 = at[1] + k * 19 + rng.uniform(0, 2)
        box = (x0, y0, x0 + 26 + rng.uniform(0, 5), y0 + 14 + rng.uniform(0, 2))
        if k == 5:  # L2's centre, a pixel smaller
            box = tuple(np.add(out[-1].box, (0.5, 0.5, -0.5, -0.5)))
        points = tuple((box[0] + a * (box[2] - box[0]), box[1] + b * (box[3] - box[1]))
                       for b in (0.04, 0.96) for a in (0.03, 0.5, 0.97))
        grade = None if k == 2 else int(rng.integers(0, 4))
        out.append(Vertebra(level, box, grade, True if k == 2 else None,
                            points=None if k == 1 else points))
    return out


def _slots(*images, spec: tg.HeadSpec = SPEC) -> dict[str, jnp.ndarray]:
    """A batch of slots from (vertebrae, geometry, complete) per image."""
    out = sl.empty_slots(len(images))
    for row, (vertebrae, geometry, complete) in enumerate(images):
        sl.fill(out, row, vertebrae, geometry, spec, complete=complete)
    return {k: jnp.asarray(v) for k, v in out.items()}


def _assert_targets(got: dict, row: int, ref: dict, atol: float) -> None:
    assert set(got) == set(ref)
    for key in ref:
        np.testing.assert_allclose(np.asarray(got[key][row], np.float64),
                                   np.asarray(ref[key], np.float64), atol=atol, err_msg=key)


@pytest.mark.parametrize("spec", [SPEC, tg.HeadSpec(stride=4, canvas=SPEC.canvas)], ids=["stride8", "stride4"])
def test_device_targets_match_the_numpy_reference(spec):
    # an original image whose border crop and padding put part of the canvas outside the image,
    # one body cut by the crop to under half (ignored), one past the bottom (left out)
    geometry = Geometry(original=(300, 180), crop=(15, 9, 285, 171), resized=(128, 60),
                        offset=(0, 2), canvas=spec.canvas)
    spine = _spine(1, at=(25.0, 20.0))
    original = [tg.map_vertebra(v, geometry.to_original) for v in spine]
    cut = Vertebra("T10", (40.0, 5.0, 90.0, 22.0), 0)
    gone = Vertebra("L4", (40.0, 290.0, 90.0, 299.0), 0)
    images = [(original + [cut, gone], geometry, True), (original[:3], geometry, False),
              (None, None, True), (spine, None, True)]
    got = _run(lambda s: vt.encode_batch(s, spec), _slots(*images, spec=spec))
    for row, (vertebrae, geo, complete) in enumerate(images):
        ref = tg.encode(vertebrae, geo, spec, complete=complete)
        _assert_targets(got, row, ref, atol=1e-5)
    ref = tg.encode(original + [cut], geometry, spec)
    assert ref["centre"].sum() == 4 and (ref["heat_weight"] == 0).any()  # the cases are exercised
    assert ref["heat"].shape == spec.grid
    with pytest.raises(ValueError, match="vertebra slots"):
        vt.encode_batch({"image": jnp.zeros((1, 8, 8, 1))}, spec)


def test_device_targets_follow_the_warp_as_warp_vertebra_does():
    spine = _spine(2, at=(16.0, 14.0))
    warps = [(17.0, 1.1, False), (-28.0, 0.87, True), (0.0, 1.0, True)]
    batch = _slots(*[(spine, None, True)] * len(warps))
    angle, scale, flip = (jnp.asarray(np.array(w)) for w in zip(*warps))
    got = _run(lambda s, a, c, f: vt.encode_batch(s, SPEC, (a, c, f)), batch, angle, scale, flip)
    for row, (a, c, f) in enumerate(warps):
        moved = [tg.warp_vertebra(v, SPEC.canvas, a, c, f) for v in spine]
        _assert_targets(got, row, tg.encode(moved, None, SPEC), atol=1e-4)


def test_the_annotations_warp_is_the_pixels_warp():
    """A blob's centroid after the step's image augmentation lands where the slots' warp
    (drawn again from the same keys) moves its centre."""
    config = AugmentConfig(max_rotation_deg=30.0, max_scale_delta=0.15, max_noise_std=0.0, flip_prob=0.5)
    h, w, n = 64, 48, 6
    centre = np.array([19.5, 27.5])  # continuous (x, y): pixel (19, 27)'s middle
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    blob = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * 2.0 ** 2))
    images = jnp.asarray(np.broadcast_to(blob[None, :, :, None], (n, h, w, 1)), jnp.float32)

    def run(images):
        keys = example_keys(3, jnp.zeros(n, jnp.int32), jnp.arange(n))
        angle, scale, flip = warp_params(keys, config)
        moved = vt.warp_points(jnp.broadcast_to(jnp.asarray(centre, jnp.float32), (n, 2)),
                               (h, w), angle, scale, flip)
        return augment_batch(images, keys, config)[..., 0], moved, flip

    warped, moved, flip = (np.asarray(x) for x in _run(run, images))
    assert 0 < int(np.sum(flip)) < n  # both ways are checked
    for k in range(n):
        mass = warped[k] / warped[k].sum()
        found = np.array([(mass * xs).sum(), (mass * ys).sum()])
        np.testing.assert_allclose(found, moved[k], atol=0.15)


def test_the_head_adds_a_map_and_leaves_the_network_as_it_was():
    """The tiny network without and with the head from one seed, built and run by one program
    (compiling is the cost): the same arrays but the head's, the same logits."""
    config = load_config("xray", "tiny")
    with_head = config.copy_and_resolve_references()
    with_head.model.vertebrae = True
    fine = with_head.copy_and_resolve_references()
    fine.model.vertebra_stride = 4
    image = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 64, 32, 1)), jnp.uint8)
    clinical, mask = jnp.zeros((2, 3)), jnp.ones((2, 3))

    def build_and_run(image, clinical, mask):
        off, on, on4 = (build_model(c, seed=0) for c in (config, with_head, fine))
        off.eval(), on.eval(), on4.eval()
        return (nnx.state(off), nnx.state(on), off(image, clinical, mask),
                on.outputs(image, clinical, mask), off.outputs(image, clinical, mask),
                on4.outputs(image, clinical, mask)["vertebrae"])

    state_off, state_on, logits, out, plain, out4 = _run(build_and_run, image, clinical, mask)
    flat_off = dict(nnx.to_flat_state(state_off))
    flat_on = dict(nnx.to_flat_state(state_on))
    assert not any("vertebra" in "/".join(map(str, k)) for k in flat_off)
    rest = {k: v for k, v in flat_on.items() if k[0] != "vertebra_head"}
    assert rest.keys() == flat_off.keys() and len(flat_on) > len(rest)
    for k, v in flat_off.items():
        a, b = v.get_value(), rest[k].get_value()
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(k))
    assert set(plain) == {"logits"}
    np.testing.assert_array_equal(np.asarray(out["logits"]), np.asarray(logits))
    spec = tg.HeadSpec(canvas=(64, 32))
    assert out["vertebrae"].shape == (2, *spec.grid, spec.channels) == (2, 8, 4, 34)
    assert out["vertebrae"].dtype == jnp.float32
    assert out4.shape == (2, *vertebra_spec(fine).grid, 34) == (2, 16, 8, 34)  # stage 1's grid
    assert vertebra_taps("tiny", 4) == ("stage6", "stage4", "stage2", "stage1")
    with pytest.raises(ConfigError, match="vertebra_stride must be one of .4, 8, 16, 32., got 2"):
        vertebra_taps("tiny", 2)
    assert spec.slices()["heat"] == slice(0, 1)
    bias = np.asarray(flat_on[("vertebra_head", "output", "bias")].get_value())
    assert bias[0] == pytest.approx(math.log(0.1 / 0.9), abs=1e-6) and not bias[1:].any()
    maps = decode.split(np.asarray(out["vertebrae"][0]), spec)  # what prediction will call
    assert maps["heat"].shape == spec.grid and maps["grade"].shape == (*spec.grid, 4)


def test_a_detached_head_trains_itself_and_not_the_backbone():
    """``model.vertebra_detach``: the vertebra map's gradient reaches the head's parameters and
    none of the backbone's; attached, it reaches both."""
    config = load_config("xray", "tiny")
    config.model.vertebrae = True
    image = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 64, 32, 1)), jnp.uint8)
    clinical = jnp.zeros((2, 3))

    def grad_norms(image, clinical):
        out = {}
        for detach in (False, True):
            config.model.vertebra_detach = detach
            model = build_model(config, seed=0)
            model.eval()
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)

            def loss(p):
                m = nnx.merge(graphdef, p, rest)
                return jnp.sum(m.outputs(image, clinical, clinical)["vertebrae"] ** 2)

            g = dict(nnx.to_flat_state(jax.grad(loss)(params)))
            norm = lambda keep: sum(jnp.sum(jnp.abs(v.get_value())) for k, v in g.items() if keep(k[0]))
            out[detach] = (norm(lambda top: top == "vertebra_head"), norm(lambda top: top == "backbone"))
        return out

    norms = _run(grad_norms, image, clinical)
    (head_on, backbone_on), (head_off, backbone_off) = norms[False], norms[True]
    assert head_on > 0 and backbone_on > 0
    assert head_off > 0 and backbone_off == 0


def _random_outputs(shape, seed=0) -> jnp.ndarray:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32) * 2.0


def test_losses_are_masked_to_annotated_images():
    spine = _spine(3)
    mixed = _slots((spine, None, True), (None, None, True), (spine[:2], None, False))
    none = _slots((None, None, True), (None, None, True))
    h, w = SPEC.grid
    sl_ = SPEC.slices()

    def total(outputs, targets):
        terms = vertebra_losses(outputs, targets, SPEC)
        return vertebra_loss(terms), terms

    def run(mixed, none):
        mixed, none = vt.encode_batch(mixed, SPEC), vt.encode_batch(none, SPEC)
        grad = jax.value_and_grad(total, has_aux=True)
        # outputs equal to the targets: no regression loss; a confident heat-map: almost no focal loss
        perfect = jnp.zeros((3, h, w, SPEC.channels))
        for name in ("size", "offset", "points"):
            perfect = perfect.at[..., sl_[name]].set(mixed[name])
        perfect = perfect.at[..., 0].set(jnp.where(mixed["centre"] > 0, 30.0, -30.0))
        return (grad(_random_outputs((3, h, w, SPEC.channels)), mixed),
                grad(_random_outputs((2, h, w, SPEC.channels), 1), none),
                vertebra_losses(perfect, mixed, SPEC))

    ((loss, terms), g), ((zero, zero_terms), g_none), perfect = _run(run, mixed, none)
    assert set(terms) == set(TERM_WEIGHTS) and np.isfinite(float(loss))
    assert all(float(v) > 0 for v in terms.values()), terms
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.abs(g[0]).sum() > 0 and np.abs(g[2]).sum() > 0
    assert not g[1].any()  # the unannotated image gets no gradient
    assert float(zero) == 0.0 and all(float(v) == 0.0 for v in zero_terms.values())
    assert not np.asarray(g_none).any()
    assert float(perfect["size"]) == float(perfect["offset"]) == float(perfect["points"]) == 0.0
    assert float(perfect["heat"]) < 1e-6


def _cache(geometries: dict[str, Geometry]) -> Cache:
    index = pd.DataFrame({"image_id": list(geometries), "record": np.arange(len(geometries)),
                          "geometry": [g.to_dict() for g in geometries.values()],
                          "shard": "shard-00000.array_record"})
    return Cache(Path("/nonexistent"), PreprocessConfig(canvas=SPEC.canvas), index,
                 pd.DataFrame(columns=["image_id", "path", "reason"]))


def test_tables_mix_annotated_and_unannotated_images(tmp_path):
    geometry = Geometry(original=(256, 128), crop=(0, 0, 256, 128), resized=(128, 64), offset=(0, 0),
                        canvas=SPEC.canvas)
    cache = _cache({"a": geometry, "b": geometry, "c": geometry})
    original = [tg.map_vertebra(v, geometry.to_original) for v in _spine(4)]
    frame = pd.DataFrame({"image_id": ["c", "a", "b"]})
    tables = vertebra_tables(frame, cache, {"a": original, "c": []}, SPEC)
    assert tables["vertebra_annotated"].tolist() == [1.0, 1.0, 0.0]  # "c": annotated, no vertebra
    assert (tables["vertebra_kind"][1] > 0).sum() == 6 and not tables["vertebra_kind"][[0, 2]].any()
    np.testing.assert_allclose(tables["vertebra_box"][1, 0], _spine(4)[0].box, atol=1e-4)
    with pytest.raises(InputDataError, match="at most"):
        vertebra_tables(frame, cache, {"a": original * 5}, SPEC)
    # where annotations come from: the setting, else the synthetic cohort's file
    config = load_config("xray", "tiny")
    manifest = tmp_path / "cohort" / "manifest.csv"
    manifest.parent.mkdir()
    assert annotations_path(config.data, manifest) is None
    (manifest.parent / "annotations.json").write_text("{}")
    assert annotations_path(config.data, manifest) == manifest.parent / "annotations.json"
    config.data.manifest = str(manifest)
    assert annotations_path(config.data, manifest) is None
    config.data.annotations = str(tmp_path / "missing.csv")
    with pytest.raises(MissingInputError, match="config.data.annotations"):
        annotations_path(config.data, manifest)


def test_a_tiny_run_trains_the_head_and_resumes(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    workdir, overrides = tmp_path / "run", ["--config.data.synthetic.num_patients=20",
                                            "--config.batch_size=4", "--config.eval_batch_size=4"]
    # the run's synthetic cohort, written here in one process (the run would start a pool)
    config = load_config("xray", "tiny")
    config.data.synthetic.num_patients = 20
    manifest = synthetic_manifest_path(config.data, tmp_path / "data")
    generate_cohort(manifest.parent, num_patients=20, domain="xray", scale=config.data.synthetic.scale,
                    seed=config.data.synthetic.seed, workers=1)

    def run(steps: int) -> str:
        cmd = [sys.executable, "-m", "vertex_jax.main", "--config=configs/xray.py:tiny",
               f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'data'}", *overrides,
               "--config.model.vertebrae=true", "--config.model.depthwise=conv",
               "--config.calibration=none", "--config.log_every_steps=1", f"--config.max_steps={steps}"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        return proc.stdout + proc.stderr

    out = run(2)
    assert "generating" not in out and "vertebra head: 14 of 14 training images annotated" in out
    out = run(3)
    assert "resumed from" in out and "at step 2" in out
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        parts = [r[f"train/vertebra_{k}"] for k in TERM_WEIGHTS]
        assert all(np.isfinite(p) and p > 0 for p in parts)
        assert r["train/loss"] == pytest.approx(r["train/image_loss"] + r["train/vertebra_loss"], rel=1e-5)
    assert (workdir / "checkpoints" / "3").is_dir()


@pytest.mark.parametrize("dilations, reach", [((1, 1), 2), ((1, 2), 3)])
def test_the_head_sees_as_far_as_its_dilations_reach(dilations, reach):
    """A cell's output depends on the features ``reach`` cells away (the sum of the 3x3
    convolutions' dilations) and not one cell further."""
    head = VertebraHead({"stage1": 4}, 3, taps=("stage1",), width=8, dilations=dilations, rngs=nnx.Rngs(0))
    head.eval()  # BatchNorm from its running statistics: the same affine map at every cell
    x = jnp.zeros((1, 15, 15, 4))
    base = head({"stage1": x})[0, 7, 7]
    for distance in (reach, reach + 1):
        moved = head({"stage1": x.at[0, 7, 7 + distance].set(1.0)})[0, 7, 7]
        assert bool(jnp.any(moved != base)) == (distance <= reach), distance


def test_the_dilations_come_from_the_config_and_are_checked():
    config = load_config("xray", "tiny")
    config.model.vertebrae = True
    config.model.vertebra_dilations = "1,2"
    assert [c.kernel_dilation for c in build_model(config, 0).vertebra_head.convs] == [1, 2]
    config.model.vertebra_dilations = "1,0"
    with pytest.raises(ConfigError, match="model.vertebra_dilations"):
        build_model(config, 0)

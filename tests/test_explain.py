"""Saliency maps against closed forms, the evidence head's pooling, localisation metrics on
hand-worked cases, the mapping of a map through crop/resize/padding, and the randomisation check."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vertex_jax.data.preprocess import PreprocessConfig, preprocess
from vertex_jax.explain import localization as loc
from vertex_jax.explain.saliency import make_saliency
from vertex_jax.models.evidence import evidence_map, pool_evidence, tap_names, tap_strides
from vertex_jax.models.vertex import VertexNet


@dataclasses.dataclass(frozen=True)
class _Backbone:
    variant: str = "tiny"


class SpatialLinear(nnx.Module):
    """A hand-made model: the 'image' is itself the head feature map A [B, h, w, C] and the
    logit of task t is sum_ij v_t[i, j] * (A[i, j] . u_t), so d logit / d A[i, j] = v_t[i, j] u_t.
    Closed forms: HiResCAM_ij = ReLU(v_ij A_ij.u), Grad-CAM_ij = ReLU(mean(v) A_ij.u),
    LayerCAM_ij = ReLU(v_ij A_ij.ReLU(u)) for v >= 0."""

    def __init__(self, v: np.ndarray, u: np.ndarray, evidence: np.ndarray | None = None):
        self.v, self.u = nnx.Param(jnp.asarray(v)), nnx.Param(jnp.asarray(u))  # [T, h, w], [T, C]
        self.fixed = None if evidence is None else nnx.Param(jnp.asarray(evidence))
        self.tasks = tuple(f"t{i}" for i in range(v.shape[0]))
        self.backbone = _Backbone()
        self.head = "gap" if evidence is None else "evidence"
        self.pooling, self.lse_r = "lse", 1.0

    def score_layers(self):
        return ("head",)

    def image_taps(self, image, taps=(), deltas=None):
        a = jnp.asarray(image, jnp.float32)
        return {"head": a + (deltas or {}).get("head", 0.0)}

    def classify_taps(self, taps, clinical, clinical_mask):
        a = taps["head"]
        logits = jnp.einsum("thw,bhwc,tc->bt", self.v[...], a, self.u[...])
        if self.fixed is None:
            return logits, None
        ev = jnp.broadcast_to(self.fixed[...], (a.shape[0], *self.fixed.shape))
        return pool_evidence(ev), ev


def _normalised(m):
    top = m.max(axis=(-2, -1), keepdims=True)
    return np.where(top > 0, m / np.where(top > 0, top, 1), 0)


@pytest.fixture
def spatial():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.0, 2.0, (2, 4, 3))  # non-uniform over positions: the methods differ
    u = rng.normal(size=(2, 5))
    a = rng.normal(size=(3, 4, 3, 5))
    return SpatialLinear(v, u), a, v, u


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "layercam"])
def test_gradient_maps_have_their_closed_forms(spatial, method):
    model, a, v, u = spatial
    maps, logits = make_saliency(model, model.tasks, method, ("head",))(a, None, None)
    proj = np.einsum("bhwc,tc->bthw", a, u)
    expected = {"hirescam": np.maximum(v[None] * proj, 0),
                "gradcam": np.maximum(v.mean(axis=(1, 2))[None, :, None, None] * proj, 0),
                "layercam": np.maximum(np.einsum("bhwc,tc->bthw", a, np.maximum(u, 0)) * v[None], 0)}
    np.testing.assert_allclose(maps, _normalised(expected[method]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, np.einsum("thw,bhwc,tc->bt", v, a, u), rtol=1e-5, atol=1e-6)


def test_hirescam_differs_from_gradcam_where_the_gradient_varies(spatial):
    model, a, *_ = spatial
    hires, _ = make_saliency(model, model.tasks, "hirescam", ("head",))(a, None, None)
    grad, _ = make_saliency(model, model.tasks, "gradcam", ("head",))(a, None, None)
    assert np.abs(hires - grad).max() > 0.05


def test_evidence_map_of_one_positive_cell_peaks_there():
    evidence = np.full((1, 5, 4, 1), -4.0, np.float32)
    evidence[0, 3, 1, 0] = 6.0
    model = SpatialLinear(np.ones((1, 5, 4)), np.ones((1, 2)), evidence=evidence[0])
    maps, logits = make_saliency(model, model.tasks, "evidence")(np.zeros((2, 5, 4, 2)), None, None)
    assert maps.shape == (2, 1, 5, 4)
    assert np.unravel_index(maps[0, 0].argmax(), (5, 4)) == (3, 1) and maps[0, 0].max() == 1.0
    # Log-sum-exp pooling: log(mean exp s) = log((19 e^-4 + e^6) / 20).
    np.testing.assert_allclose(logits[:, 0], np.log((19 * np.exp(-4) + np.exp(6)) / 20), rtol=1e-6)


def test_lse_pooling_gradient_is_the_evidence_map_and_spans_mean_to_max():
    s = jax.random.normal(jax.random.key(0), (2, 6, 5, 3))
    for r in (0.5, 1.0, 4.0):
        grad = jax.grad(lambda x: pool_evidence(x, "lse", r).sum())(s)
        np.testing.assert_allclose(grad, evidence_map(s, "lse", r), rtol=1e-5, atol=1e-7)
        assert np.all(np.asarray(grad) > 0)  # every position gets gradient
    # Bounds: mean <= LSE_r <= mean + r max(s - mean)^2 / 2 and max - log(n) / r <= LSE_r <= max;
    # 1e-4 covers float32 rounding of logsumexp (|r s| + log n < 10, divided by r >= 0.01).
    mean, top = np.asarray(s.mean(axis=(1, 2))), np.asarray(s.max(axis=(1, 2)))
    spread = np.asarray(((s - s.mean(axis=(1, 2), keepdims=True)) ** 2).max(axis=(1, 2)))
    for r in (0.01, 1.0, 100.0):
        z = np.asarray(pool_evidence(s, "lse", r))
        assert np.all(z >= mean - 1e-4) and np.all(z <= top + 1e-4)
        assert np.all(z >= top - np.log(30) / r - 1e-4)
    assert np.all(np.asarray(pool_evidence(s, "lse", 0.01)) <= mean + 0.01 * spread / 2 + 1e-4)
    np.testing.assert_allclose(pool_evidence(s, "mean"), s.mean(axis=(1, 2)), rtol=1e-6)


def test_max_pooling_teaches_only_the_strongest_cell_and_poolings_go_per_task():
    s = jax.random.normal(jax.random.key(1), (2, 6, 5, 2))
    z = pool_evidence(s, "max,mean")
    np.testing.assert_allclose(z[:, 0], s[..., 0].max(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(z[:, 1], s[..., 1].mean(axis=(1, 2)), rtol=1e-6)
    grad = np.asarray(jax.grad(lambda x: pool_evidence(x, "max,mean")[:, 0].sum())(s))[..., 0]
    for b in range(2):  # one-hot at the argmax: the multiple-instance rule
        top = np.unravel_index(np.asarray(s[b, ..., 0]).argmax(), (6, 5))
        assert grad[b][top] == 1.0 and np.count_nonzero(grad[b]) == 1
    maps = np.asarray(evidence_map(s, "max,mean"))
    np.testing.assert_allclose(maps[..., 0].sum(axis=(1, 2)), 1.0, rtol=1e-5)  # softmax share
    np.testing.assert_allclose(maps[..., 1], np.maximum(np.asarray(s[..., 1]), 0))  # ReLU, as CAM
    with pytest.raises(ValueError, match="one per task"):
        pool_evidence(s, "max,mean,lse")


def test_local_evidence_pyramid_without_the_head_features():
    """Taps stage3 -> stage2 (stride 8): the map's cells see a few vertebrae; taps must go coarse to fine."""
    model = VertexNet(variant="tiny", tasks=("pvf", "osteo"), head="evidence",
                      evidence_taps=("stage3", "stage2"), pooling="max,mean", rngs=nnx.Rngs(0))
    model.eval()
    image = jax.random.uniform(jax.random.key(2), (2, 64, 32, 1))
    maps, logits = make_saliency(model, model.tasks, "evidence")(image, jnp.ones((2, 3)), jnp.ones((2, 3)))
    assert maps.shape == (2, 2, 8, 4) and logits.shape == (2, 2)
    with pytest.raises(ValueError, match="coarse to fine"):
        VertexNet(variant="tiny", tasks=("pvf",), head="evidence", evidence_taps=("stage2", "stage3"),
                  rngs=nnx.Rngs(0))


def test_evidence_model_trains_end_to_end_and_clinical_values_do_not_move_the_map():
    model = VertexNet(variant="tiny", tasks=("pvf", "osteo"), head="evidence", rngs=nnx.Rngs(0))
    image = jax.random.uniform(jax.random.key(1), (4, 64, 32, 1))
    clinical, mask = jnp.ones((4, 3)), jnp.ones((4, 3))

    def loss(m):
        return jnp.mean(m(image, clinical, mask) ** 2)

    grads = nnx.jit(nnx.grad(loss))(model)
    assert float(jnp.abs(grads.evidence.logits.kernel[...]).sum()) > 0
    assert float(jnp.abs(grads.backbone.stages[4][0].project_conv.kernel[...]).sum()) > 0
    model.eval()
    a, _ = make_saliency(model, ("pvf",), "evidence")(image, clinical, mask)
    b, _ = make_saliency(model, ("pvf",), "evidence")(image, clinical * 0, mask * 0)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert a.shape == (4, 1, 4, 2)  # stride 16 on 64x32


def test_b4_at_paper_size_gives_the_documented_map_resolutions():
    model = nnx.eval_shape(lambda: VertexNet(variant="b4", tasks=("pvf",), head="evidence",
                                             rngs=nnx.Rngs(0)))
    image = jax.ShapeDtypeStruct((2, 1024, 512, 1), jnp.uint8)
    clin = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    taps = nnx.eval_shape(lambda m, x: m.image_taps(x, ("stage2", "stage4")), model, image)
    assert taps["head"].shape[1:3] == (32, 16) and taps["stage4"].shape[1:3] == (64, 32)
    assert taps["stage2"].shape[1:3] == (128, 64)
    _, ev = nnx.eval_shape(lambda m, t, c: m.classify_taps(t, c, c), model, taps, clin)
    assert ev.shape == (2, 64, 32, 1)
    assert tap_strides("b4") == {"stage0": 2, "stage1": 4, "stage2": 8, "stage3": 16,
                                 "stage4": 16, "stage5": 32, "stage6": 32, "head": 32}


def test_gap_model_maps_equal_the_class_activation_map():
    """For global average pooling followed by linear layers (eval mode, no clinical branch),
    Grad-CAM and HiResCAM both equal CAM: ReLU(A . w) with w the product of the linear maps."""
    model = VertexNet(variant="tiny", tasks=("pvf",), use_clinical=False, rngs=nnx.Rngs(3))
    model.eval()
    image = np.asarray(jax.random.uniform(jax.random.key(2), (2, 64, 32, 1)))
    feats = np.asarray(model.image_features(jnp.asarray(image)), np.float64)
    w = (np.asarray(model.image_projection.kernel[...], np.float64)
         @ np.asarray(model.fusion.kernel[...], np.float64)
         @ np.asarray(model.output.kernel[...], np.float64))[:, 0]
    cam = _normalised(np.maximum(feats @ w, 0)[:, None])
    for method in ("gradcam", "hirescam"):
        maps, _ = make_saliency(model, "pvf", method, ("head",))(image, None, None)
        np.testing.assert_allclose(maps, cam, atol=1e-4)


def test_localisation_metrics_on_a_hand_worked_image():
    # 200 wide, 100 high: a transposed axis would put the peak outside the image.
    heat = np.zeros((100, 200), np.float32)
    heat[40:50, 150:160] = 0.5
    heat[44, 155] = 1.0  # peak at x=155, y=44
    vertebrae = [loc.Vertebra("T12", (140, 30, 170, 60), True),
                 loc.Vertebra("L1", (140, 62, 170, 92), False),
                 loc.Vertebra("T11", (10, 0, 30, 20), True)]
    r = loc.score_image(heat, vertebrae, tolerance=5.0)
    assert r["peak"] == (155.0, 44.0) and r["strict"] and r["tolerant"]
    assert r["level"] == "T12" and r["level_hit"]
    assert r["energy"] == pytest.approx(1.0)  # all the mass lies inside T12's box
    assert r["chance_image"] == pytest.approx((30 * 30 + 20 * 20) / (100 * 200))
    assert r["chance_spine"] == pytest.approx((30 * 30 + 20 * 20) / (30 * 30 * 2 + 20 * 20))
    assert r["chance_level"] == pytest.approx(2 / 3)
    # Peak 4 px right of T11's box: a tolerant hit, not a strict one; nearest centre is T11.
    heat2 = np.zeros((100, 200), np.float32)
    heat2[10, 33] = 1.0
    heat2[70, 150] = 0.25  # mass inside L1, which is not fractured
    r2 = loc.score_image(heat2, vertebrae, tolerance=5.0)
    assert not r2["strict"] and r2["tolerant"] and r2["level"] == "T11"
    assert r2["energy"] == pytest.approx(0.0)
    assert not loc.score_image(heat2, vertebrae, tolerance=2.0)["tolerant"]
    s = loc.summarise([r, r2])
    assert s["strict"]["hits"] == 1 and s["tolerant"]["hits"] == 2 and s["images"] == 2
    lo, hi = s["strict"]["ci95"]
    assert 0 < lo < 0.5 < hi < 1  # Wilson interval of 1/2
    assert s["energy"]["mean"] == pytest.approx(0.5)


def test_region_is_the_connected_area_above_half_the_peak():
    heat = np.zeros((50, 60), np.float32)
    heat[10:20, 5:15] = 0.6
    heat[12, 8] = 1.0
    heat[30:40, 40:50] = 0.9  # above half the peak, but not connected to it
    assert loc.region(heat, loc.peak(heat)) == (5, 10, 15, 20)


def test_map_peak_lands_on_the_original_pixel_through_crop_resize_and_padding():
    original = np.random.default_rng(0).integers(0, 4096, (700, 300)).astype(np.uint16)
    canvas, geometry = preprocess(original, PreprocessConfig(canvas=(128, 64), border_crop=0.05))
    target = np.array([180.0, 420.0])  # (x, y) in the original
    cx, cy = geometry.to_canvas(target)
    canvas_map = np.zeros(canvas.shape, np.float32)
    canvas_map[int(cy), int(cx)] = 1.0
    heat = geometry.heatmap_to_original(canvas_map)
    assert heat.shape == original.shape
    x, y = loc.peak(heat)
    per_canvas_px = 1 / np.mean(geometry.scale)  # original pixels per canvas pixel
    assert abs(x - target[0]) <= 1.5 * per_canvas_px and abs(y - target[1]) <= 1.5 * per_canvas_px
    assert heat[: geometry.crop[0]].max() == 0  # nothing in the cropped-away border


def test_boxes_from_csv_and_json_agree(tmp_path):
    (tmp_path / "a.json").write_text(
        '{"img1": [{"level": "L1", "box": [1, 2, 30, 40], "fractured": true},'
        ' {"level": "L2", "box": [1, 41, 30, 80], "fractured": false}]}')
    (tmp_path / "a.csv").write_text("image_id,level,x0,y0,x1,y1,fractured\n"
                                    "img1,L1,1,2,30,40,1\nimg1,L2,1,41,30,80,0\n")
    assert loc.load_boxes(tmp_path / "a.json") == loc.load_boxes(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("image_id,level,x0,y0,x1,y1\nimg1,L1,1,2,30,40\n")
    with pytest.raises(ValueError, match="fractured"):
        loc.load_boxes(tmp_path / "b.csv")


def test_randomised_model_gives_other_maps():
    image = np.asarray(jax.random.uniform(jax.random.key(5), (4, 64, 32, 1)))
    clinical, mask = np.ones((4, 3), np.float32), np.ones((4, 3), np.float32)
    maps = []
    for seed in (0, 0, 1):
        model = VertexNet(variant="tiny", tasks=("pvf",), head="evidence", rngs=nnx.Rngs(seed))
        model.eval()
        maps.append(make_saliency(model, "pvf", "layercam", ("stage2", "head"))(image, clinical, mask)[0])
    same = [loc.rank_correlation(a, b) for a, b in zip(maps[0][:, 0], maps[1][:, 0])]
    other = [loc.rank_correlation(a, b) for a, b in zip(maps[0][:, 0], maps[2][:, 0])]
    assert np.allclose(same, 1.0)
    assert np.mean(other) < 0.9
    assert loc.rank_correlation(np.arange(6.0), -np.arange(6.0)) == pytest.approx(-1.0)


def test_evidence_head_model_predicts_and_explains_itself(tmp_path, capsys):
    """A model.head=evidence checkpoint (the training code's own writer) through predict
    --explain on synthetic radiographs with vertebra boxes: HiResCAM by default, its own map
    on request."""
    import json

    import pandas as pd

    from checkpoints import write_checkpoint
    from vertex_jax.predict.__main__ import main as predict_main
    from vertex_jax.synthetic.cohort import generate_cohort

    run = write_checkpoint(tmp_path / "run", head="evidence")
    manifest = pd.read_csv(generate_cohort(tmp_path / "cohort", num_patients=12, scale=0.1, seed=3,
                                           workers=1, formats="png"), dtype=str, keep_default_na=False)
    fractured = manifest[manifest["pvf"] == "1"].head(3)
    assert len(fractured) >= 1
    fractured.to_csv(tmp_path / "cohort" / "fractured.csv", index=False)
    for method in ("", "evidence"):
        out = tmp_path / f"ex{method}"
        assert predict_main(["--checkpoint", str(run), "--input", str(tmp_path / "cohort" / "fractured.csv"),
                             "--out", str(tmp_path / "s.csv"), "--explain", str(out),
                             "--annotations", str(tmp_path / "cohort" / "annotations.json"),
                             "--no-progress", *(["--method", method] if method else [])]) == 0
        summary = json.loads((out / "localization.json").read_text())
        assert summary["method"] == (method or "hirescam")
        # HiResCAM reads the finest layer the evidence head reads (its taps: head, stage4)
        assert summary["layers"] == ([] if method else ["stage4"])
        assert summary["tasks"]["pvf"]["images"] == len(fractured)
        assert f"localisation of pvf ({method or 'hirescam'}" in capsys.readouterr().out
        assert (out / "review.html").exists()
    # Grad-CAM at `head` of this (untrained) evidence model: the channel-mean gradients leave
    # nothing after the ReLU, so every map is empty: reported as such, never as a peak
    assert predict_main(["--checkpoint", str(run), "--input", str(tmp_path / "cohort" / "fractured.csv"),
                         "--out", str(tmp_path / "s.csv"), "--gradcam", str(tmp_path / "gc"),
                         "--no-progress"]) == 0
    assert f"warning: {len(fractured)} pvf map(s) empty or constant" in capsys.readouterr().err
    scores = pd.read_csv(tmp_path / "s.csv")
    assert (scores["pvf_map"] == "empty").all() and "pvf_peak_x" not in scores


def test_score_layers_are_the_layers_with_a_nonzero_gradient():
    """The model's own list of layers its scores read agrees with autodiff: a tap after the
    coarsest one the evidence head reads gets an exactly zero gradient, the others do not."""
    model = VertexNet(variant="tiny", tasks=("pvf",), head="evidence", evidence_taps=("stage3", "stage2"),
                      use_clinical=False, rngs=nnx.Rngs(0))
    model.eval()
    names = tap_names("tiny")
    assert model.score_layers() == names[:names.index("stage3") + 1]
    image = jax.random.uniform(jax.random.key(1), (1, 64, 32, 1))
    shapes = jax.eval_shape(lambda: model.image_taps(image, names))
    zeros = {n: jnp.zeros(shapes[n].shape, jnp.float32) for n in names}
    grads = jax.grad(lambda d: model.classify_taps(model.image_taps(image, names, d), None, None)[0].sum())(zeros)
    assert {n for n in names if float(jnp.abs(grads[n]).max()) > 0} == set(model.score_layers())
    with pytest.raises(ValueError, match=r"do not depend on layer\(s\) head .*layers that work: stage0, "):
        make_saliency(model, "pvf", "gradcam", ("head",))
    gap = VertexNet(variant="tiny", tasks=("pvf",), use_clinical=False, rngs=nnx.Rngs(0))
    assert gap.score_layers() == names


def test_an_empty_map_reports_no_peak_and_is_counted(tmp_path):
    """A task whose map is zero everywhere gets ``<task>_map = empty`` and no peak, region or
    level; the other task's findings are unchanged."""
    from vertex_jax.data.preprocess import Geometry
    from vertex_jax.predict.explain_writer import ExplainWriter
    from vertex_jax.predict.run import Prepared

    rng = np.random.default_rng(0)
    v = np.stack([np.zeros((4, 3)), rng.uniform(0.5, 2.0, (4, 3))])  # task t0 reads nothing
    model = SpatialLinear(v, rng.normal(size=(2, 5)))
    writer = ExplainWriter(model, model.tasks, ["a"], tmp_path, method="hirescam", layers=("head",),
                           overlays=False)
    geometry = Geometry(original=(4, 3), crop=(0, 0, 4, 3), resized=(4, 3), offset=(0, 0), canvas=(4, 3))
    writer([Prepared(0, np.zeros((4, 3)), geometry, np.zeros((4, 3)))], rng.normal(size=(1, 4, 3, 5)),
           None, None)
    row = writer.findings["a"]
    assert row["t0_map"] == "empty" and not any(k.startswith("t0_peak") for k in row)
    assert "t1_peak_x" in row and "t1_map" not in row
    assert writer.summary()["empty_maps"] == {"t0": ["a"]}


def test_hirescam_reads_stage1_of_a_gap_model_and_the_finest_layer_of_an_evidence_head():
    from vertex_jax.explain.saliency import default_layers

    for head, expected in (("gap", ("stage1",)), ("evidence", ("stage2",))):
        model = VertexNet(variant="tiny", tasks=("pvf",), head=head, evidence_taps=("stage4", "stage2"),
                          rngs=nnx.Rngs(0))
        assert default_layers("hirescam", model) == expected
        assert default_layers("gradcam", model) == ("head",)

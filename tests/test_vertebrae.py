"""Vertebrae: annotations, Genant by measurement, dense targets and their decoding, level
naming from the spine's order, and the per-vertebra metrics (NumPy only, no network)."""

import ast
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vertex_jax.data.preprocess import preprocess
from vertex_jax.errors import InputDataError
from vertex_jax.synthetic import cohort as synthetic, phantom
from vertex_jax.vertebrae import LEVELS, annotations as ann, decode as dec, genant, levels as lv
from vertex_jax.vertebrae import metrics as met, targets as tg

PACKAGE = Path(__file__).resolve().parents[1] / "vertex_jax" / "vertebrae"


def test_the_package_imports_no_jax():
    roots = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots.add(node.module.split(".")[0])
    assert roots and not roots & {"jax", "jaxlib", "flax", "optax", "orbax"}
    assert LEVELS == phantom.LEVELS and ann.POINTS == phantom.ENDPLATE_POINTS


# --- annotations -------------------------------------------------------------------------

JSON_TEXT = json.dumps({
    "img1": [{"level": "T12", "box": [10, 20, 40, 45], "grade": 2, "fractured": True,
              "fracture_type": "wedge",
              "points": {"superior_anterior": [11.5, 24.0], "superior_middle": [25.0, 22.0],
                         "superior_posterior": [39.0, 21.0], "inferior_anterior": [11.0, 40.0],
                         "inferior_middle": [25.0, 43.0], "inferior_posterior": [39.5, 44.0]}},
             {"level": "L1", "box": [12, 50, 42, 78], "grade": 0}],
    "img2": [{"level": None, "box": [1.5, 2.5, 30.25, 28], "fractured": True}]})
CSV_TEXT = """image_id,level,x0,y0,x1,y1,grade,fractured,fracture_type,{points}
img1,T12,10,20,40,45,2,1,wedge,11.5,24,25,22,39,21,11,40,25,43,39.5,44
img1,L1,12,50,42,78,0,,,,,,,,,,,,,,
img2,,1.5,2.5,30.25,28,,1,,,,,,,,,,,,,
""".format(points=",".join(ann.POINT_COLUMNS))


def test_json_and_csv_readers_agree(tmp_path):
    (tmp_path / "a.json").write_text(JSON_TEXT)
    (tmp_path / "a.csv").write_text(CSV_TEXT)
    from_json, from_csv = ann.read_annotations(tmp_path / "a.json"), ann.read_annotations(tmp_path / "a.csv")
    assert from_json == from_csv
    first, second = from_json["img1"]
    assert first.points[4] == (25.0, 43.0) and first.fracture_type == "wedge"
    assert second.fractured is False and second.points is None  # fractured from the grade
    (only,) = from_json["img2"]
    assert only.level is None and only.grade is None and only.fractured is True
    # written back as CSV, read again: the same
    assert ann.read_csv(ann.write_csv(from_json, tmp_path / "b.csv")) == from_json


def test_synthetic_annotations_read_the_same_from_json_and_csv(tmp_path):
    manifest = synthetic.generate_cohort(tmp_path / "c", num_patients=3, scale=0.05, seed=2,
                                         workers=1, formats="png")
    from_json = ann.read_json(manifest.parent / "annotations.json")
    assert ann.read_csv(ann.write_csv(from_json, tmp_path / "c.csv")) == from_json
    for vertebrae in from_json.values():
        assert [v.level for v in vertebrae] == list(LEVELS)
        assert all(v.points is not None and v.grade in (0, 1, 2, 3) for v in vertebrae)


def test_the_localisation_box_csv_is_a_vertebra_csv(tmp_path):
    (tmp_path / "a.csv").write_text("image_id,level,x0,y0,x1,y1,fractured\nimg1,L1,1,2,30,40,1\n")
    (v,) = ann.read_csv(tmp_path / "a.csv")["img1"]
    assert v == ann.Vertebra("L1", (1.0, 2.0, 30.0, 40.0), None, True)


@pytest.mark.parametrize("text, message", [
    ("image_id,level,x0,y0,x1\na,L1,1,2,3\n", "y1"),
    ("image_id,level,x0,y0,x1,y1\na,L1,1,2,3,4\n", "grade or a fractured"),
    ("image_id,level,x0,y0,x1,y1,grade,fractured\na,L1,1,2,3,4,2,0\n", ":2: fractured=False"),
    ("image_id,level,x0,y0,x1,y1,grade\na,L1,1,2,3,4,0\nb,L1,5,2,3,4,1\n", ":3: box"),
    ("image_id,level,x0,y0,x1,y1,grade\na,L1,1,2,3,4,5\n", "grade"),
    ("image_id,level,x0,y0,x1,y1,grade\na,Th12,1,2,3,4,0\n", "level"),
    ("image_id,level,x0,y0,x1,y1,grade,superior_anterior_x\na,L1,1,2,3,4,0,1\n", "point columns"),
])
def test_bad_csv_rows_name_file_and_line(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(InputDataError, match=message):
        ann.read_csv(tmp_path / "bad.csv")


def test_bad_json_names_the_image(tmp_path):
    (tmp_path / "bad.json").write_text('{"img7": [{"level": "L1", "box": [1, 2, 3]}]}')
    with pytest.raises(InputDataError, match="img7"):
        ann.read_json(tmp_path / "bad.json")


# --- the phantom's endplate points -----------------------------------------------------------

def test_endplate_points_are_the_outline_corners_and_give_the_fracture_loss():
    rng = np.random.default_rng(8)
    fractures = (phantom.make_fracture(rng, "T12", "wedge", 2),
                 phantom.make_fracture(rng, "L2", "biconcave", 3),
                 phantom.make_fracture(rng, "T7", "crush", 1))
    anatomy = phantom.sample_anatomy(rng, age=70, bmi=24, t_score=-3.0, fractures=fractures)
    acq = phantom.sample_acquisition(rng, "xray", scale=0.2)
    broken = phantom.layout(anatomy, acq)
    intact = phantom.layout(dataclasses.replace(anatomy, fractures=()), acq)
    m, wall = phantom._SHAPE_POINTS, phantom._WALL_POINTS
    corners = {"superior_posterior": 0, "superior_anterior": m - 1,
               "inferior_anterior": m + wall, "inferior_posterior": 2 * m + wall - 1}
    by_level = {f.level: f for f in fractures}
    for b, n in zip(broken.bodies, intact.bodies):
        for name, k in corners.items():
            np.testing.assert_allclose(b.endplates[ann.POINTS.index(name)], b.outline[k], atol=1e-9)
        ratios = (genant.heights(b.endplates) / broken.px_per_mm) / (genant.heights(n.endplates) / intact.px_per_mm)
        expected = by_level[b.level].ratios if b.level in by_level else (1.0, 1.0, 1.0)
        np.testing.assert_allclose(ratios, expected, rtol=1e-9)
    # what annotations.json carries: the same points to 0.01 px
    ph = phantom.render(anatomy, acq, np.random.default_rng(0))
    for v, b in zip(ph.vertebrae, broken.bodies):
        np.testing.assert_allclose(v.points, b.endplates, atol=0.005 + 1e-9)
        assert list(v.to_dict()["points"]) == list(ann.POINTS)


# --- Genant by measurement ---------------------------------------------------------------------

def _body(anterior, middle, posterior, depth=30.0, angle=0.0, at=(100.0, 200.0)):
    """Six endplate points (POINTS order) of a body with a flat inferior endplate, its
    anterior side at x = 0, turned by ``angle`` (radians) and placed at ``at``."""
    u = np.array([0.0, depth / 2, depth])
    pts = np.array([[u[0], -anterior], [u[1], -middle], [u[2], -posterior],
                    [u[0], 0.0], [u[1], 0.0], [u[2], 0.0]])
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) + at


@pytest.mark.parametrize("anterior, middle, posterior, loss, grade", [
    (10, 10, 10, 0.0, 0),
    (8.01, 10, 10, 0.199, 0),
    (8, 10, 10, 0.20, 1),       # 20%: the lowest mild loss
    (10, 10, 7.6, 0.24, 1),     # posterior collapse
    (7.5, 9, 10, 0.25, 2),      # 25%: the lowest moderate loss
    (10, 6.01, 10, 0.399, 2),   # biconcave
    (6, 8, 10, 0.40, 3),        # 40%: the lowest severe loss
    (9, 4, 8, 1 - 4 / 9, 3),    # the expected height is the largest of the three
])
def test_genant_by_measurement_on_hand_worked_bodies(anterior, middle, posterior, loss, grade):
    for angle in (0.0, 0.6, -2.0):  # any rotation measures the same
        pts = _body(anterior, middle, posterior, angle=angle)
        np.testing.assert_allclose(genant.heights(pts), (anterior, middle, posterior), rtol=1e-12)
        assert genant.height_loss(genant.heights(pts)) == pytest.approx(loss, abs=1e-12)
        assert genant.measured_grade(pts) == grade


def test_grade_boundaries_belong_to_the_grade_above():
    losses = [0.0, 0.1999, 0.2, 1 - 0.8, 0.2499, 0.25, 0.3999, 0.4, 0.95]
    assert genant.grade_from_loss(losses).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3]


def test_reference_height_and_neighbours():
    even = np.array([8.0, 8.0, 8.0])  # an even collapse: no loss against itself
    assert genant.height_loss(even) == 0.0
    assert genant.height_loss(even, reference=10.0) == pytest.approx(0.2)
    assert genant.height_loss(even, reference=6.0) == 0.0  # never below its own largest
    spine = np.array([[10, 10, 10], [7.0, 9.5, 10.5], [8, 8, 8], [12, 11.5, 12], [14, 14, 14.0]])
    ref = genant.neighbour_reference(spine)
    # level 1 (a wedge: 1 - 7/10.5 = 33% against itself) is no reference, nor, from the second
    # round, level 2 (an even collapse: 1 - 8/11 = 27% against levels 0 and 3)
    np.testing.assert_allclose(ref, [12.0, 11.0, 11.0, 12.0, 12.0])
    one_round = genant.neighbour_reference(spine, rounds=1)
    np.testing.assert_allclose(one_round, [8.0, 9.0, 11.0, 11.0, 12.0])
    np.testing.assert_allclose(genant.neighbour_reference(spine[:1]), [np.nan])
    assert genant.grade_from_loss(genant.height_loss(spine, ref)).tolist() == [0, 2, 2, 0, 0]
    with pytest.raises(ValueError, match="no height"):
        genant.height_loss(np.zeros(3))


def test_measured_grades_agree_with_the_synthetic_grades():
    """Intact bodies measure grade 0 against themselves by construction (their own wedge and
    concavity stay under 11%). Against the neighbours' heights as well, the phantom's
    fractures (stored loss >= 25% at the default grades) measure >= 1: all of them over 2,000
    images, where the floors here leave a wide margin."""
    patients = synthetic.simulate_patients(80, seed=12)
    stored, own, nb = [], [], []
    for p in patients:
        ph = synthetic.render_exam(p, 0, domain="xray", scale=0.05, seed=12)
        h = genant.heights(np.array([v.points for v in ph.vertebrae]))
        stored += [v.grade for v in ph.vertebrae]
        own += genant.grade_from_loss(genant.height_loss(h)).tolist()
        nb += genant.grade_from_loss(genant.height_loss(h, np.nan_to_num(genant.neighbour_reference(h)))).tolist()
    stored, own, nb = map(np.array, (stored, own, nb))
    fractured = stored > 0
    assert fractured.sum() >= 20
    assert (own[~fractured] == 0).all()
    assert (nb[~fractured] == 0).mean() >= 0.99
    assert (nb[fractured] > 0).mean() >= 0.9
    assert (nb == stored).mean() >= 0.97


# --- level naming ------------------------------------------------------------------------------

def _log_probs(favoured, strength=3.0, n=len(LEVELS)):
    logits = np.zeros((len(favoured), n))
    for k, level in enumerate(favoured):
        if level is not None:
            logits[k, LEVELS.index(level)] = strength
    return lv.log_softmax(logits)


def test_a_whole_spine_is_named_in_order():
    got = lv.name_levels(_log_probs(LEVELS))
    assert got.tolist() == list(range(len(LEVELS)))


def test_a_cropped_spine_starting_at_t6_is_named_from_t6():
    truth = LEVELS[2:10]  # T6 .. L1
    evidence = list(truth)
    evidence[3] = "T12"  # one vertebra alone would be called T12
    lp = _log_probs(evidence, strength=2.0)
    assert LEVELS[int(lp[3].argmax())] == "T12"
    assert [LEVELS[i] for i in lv.name_levels(lp)] == list(truth)


def test_a_missed_vertebra_leaves_a_gap():
    truth = [lvl for lvl in LEVELS if lvl != "T9"]
    # the level evidence alone
    named = lv.name_levels(_log_probs(truth, strength=4.0))
    assert [LEVELS[i] for i in named] == truth
    # weak evidence (only the first says T4): the double distance at the gap decides
    y = np.cumsum([0.0] + [2.0 if a == "T8" else 1.0 for a in truth[:-1]]) * 30.0
    centres = np.stack([np.full(len(y), 50.0), y], 1)
    lp = _log_probs(["T4"] + [None] * (len(truth) - 1))
    assert [LEVELS[i] for i in lv.name_levels(lp, centres, np.full(len(y), 24.0))] == truth
    assert [LEVELS[i] for i in lv.name_levels(lp)] == list(LEVELS[:-1])  # no spacing: no gap


def test_naming_follows_the_image_order_and_drops_a_surplus():
    truth = LEVELS[3:8]
    order = np.array([3, 0, 4, 1, 2])
    centres = np.stack([np.zeros(5), 100.0 + 40.0 * np.arange(5)], 1)[order]
    named = lv.name_levels(_log_probs([truth[k] for k in order]), centres)
    assert [LEVELS[i] for i in named] == [truth[k] for k in order]
    surplus = lv.name_levels(_log_probs(list(LEVELS) + ["L4"]))
    assert (surplus == -1).sum() == 1 and sorted(surplus[surplus >= 0]) == list(range(len(LEVELS)))
    assert lv.name_levels(np.zeros((0, len(LEVELS)))).tolist() == []


def test_order_names_noisy_evidence_on_synthetic_spines():
    """Cropped spines (T4-T8 to L1-L4 first and last) with a missed vertebra in half of them,
    level evidence so noisy that alone it names under 60% right: the order names > 90%
    (measured over 300 spines: 98.9%; 94.8% without the spacing term; 46% alone)."""
    rng = np.random.default_rng(0)
    hits, alone = [], []
    for p in synthetic.simulate_patients(100, seed=3):
        bodies = phantom.layout(*_anatomy_and_acquisition(p)).bodies
        keep = list(range(int(rng.integers(0, 5)), 13 - int(rng.integers(0, 4))))
        if rng.random() < 0.5:
            keep.pop(int(rng.integers(1, len(keep) - 1)))
        logits = rng.normal(0.0, 1.0, (len(keep), len(LEVELS)))
        logits[np.arange(len(keep)), keep] += 1.5
        lp = lv.log_softmax(logits)
        outlines = [bodies[k].outline for k in keep]
        centres = np.array([(o.min(0) + o.max(0)) / 2 for o in outlines])
        heights = np.array([np.ptp(o[:, 1]) for o in outlines])
        hits += (lv.name_levels(lp, centres, heights) == keep).tolist()
        alone += (lp.argmax(1) == keep).tolist()
    assert np.mean(alone) < 0.6 and np.mean(hits) > 0.9


def _anatomy_and_acquisition(patient):
    rng = np.random.default_rng(patient.index)
    anatomy = phantom.sample_anatomy(rng, age=patient.age, bmi=patient.bmi, t_score=patient.t_score,
                                     fractures=patient.fractures)
    return anatomy, phantom.sample_acquisition(rng, "xray", scale=0.05)


# --- targets and decoding -----------------------------------------------------------------------

def _maps(t, confidence=10.0):
    """Targets as the head's named outputs would be when exactly right."""
    onehot = lambda idx, n: np.where(idx[..., None] == np.arange(n), confidence, 0.0)  # noqa: E731
    return {"heat": t["heat"], "size": t["size"], "offset": t["offset"], "points": t["points"],
            "level": onehot(t["level"], len(LEVELS)), "grade": onehot(t["grade"], 4)}


def test_encode_then_decode_recovers_the_annotations():
    spec = tg.HeadSpec()
    for domain, scale in (("xray", 0.15), ("vfa", 0.4)):
        patient = synthetic.simulate_patients(5, seed=4)[1]
        ph = synthetic.render_exam(patient, 0, domain=domain, scale=scale, seed=4)
        _, geometry = preprocess(ph.pixels)
        truth = [ann.vertebra_from_dict(v.to_dict()) for v in ph.vertebrae]
        t = tg.encode(truth, geometry, spec)
        assert t["centre"].sum() == len(truth) and t["annotated"] == 1.0
        found = dec.decode(_maps(t), spec, geometry)
        per_canvas_px = 1.0 / min(geometry.scale)  # original pixels per canvas pixel
        assert [d.level for d in found] == [v.level for v in truth]
        assert [d.grade for d in found] == [v.grade for v in truth]
        for d, v in zip(found, truth):
            assert np.abs(np.subtract(d.box, v.box)).max() <= per_canvas_px
            assert np.abs(np.subtract(d.points, v.points)).max() <= per_canvas_px
            assert d.score == pytest.approx(1.0)


def test_targets_of_unannotated_partial_and_ignored_vertebrae():
    spec = tg.HeadSpec()
    none = tg.encode(None, None, spec)
    assert none["annotated"] == 0.0 and not none["heat_weight"].any() and not none["centre"].any()
    boxes = [ann.Vertebra("L1", (100.0, 400.0, 148.0, 440.0), 2),
             ann.Vertebra("L5", (100.0, 600.0, 148.0, 640.0), 0),  # not a T4-L4 level
             ann.Vertebra("L2", (100.0, 1015.0, 148.0, 1060.0), 0)]  # mostly off the canvas
    full = tg.encode(boxes, None, spec)
    assert full["centre"].sum() == 1 and full["grade"][full["centre"]].tolist() == [2]
    assert full["level"][full["centre"]].tolist() == [LEVELS.index("L1")]
    assert full["heat_weight"][75:80, 12:19].max() == 0.0  # L5's cells
    assert full["heat_weight"][127, 12:19].max() == 0.0  # the cut-off L2's cells
    assert full["heat_weight"].mean() > 0.98
    i, j = np.argwhere(full["centre"])[0]
    assert (i, j) == (420 // 8, 124 // 8) and full["heat"][i, j] == 1.0
    np.testing.assert_allclose(full["size"][i, j], (6.0, 5.0))
    np.testing.assert_allclose(full["offset"][i, j], (124 / 8 - 15, 420 / 8 - 52))
    partial = tg.encode(boxes[:1], None, spec, complete=False)
    assert partial["heat_weight"].sum() == partial["heat_weight"][50:55, 12:19].sum() == 35
    batch = tg.stack([full, partial, none])
    assert batch["heat"].shape == (3, *spec.grid) and batch["points"].shape == (3, *spec.grid, 12)
    assert batch["annotated"].tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("angle, scale, flip", [(0.0, 1.0, True), (25.0, 1.1, False), (-30.0, 0.85, True)])
def test_warped_vertebrae_follow_the_augmentations_pixels(angle, scale, flip):
    """Against cv2.warpAffine with the rotation matrix the training warp matches: a blob's
    centre of mass lands where the warped point says."""
    import cv2
    h, w = 96, 64
    ys, xs = np.mgrid[0:h, 0:w]
    point = (20.3, 31.7)  # continuous (x, y): pixel i spans [i, i + 1)
    blob = np.exp(-((xs + 0.5 - point[0]) ** 2 + (ys + 0.5 - point[1]) ** 2) / (2 * 2.0**2))
    image = blob[:, ::-1] if flip else blob
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)
    out = cv2.warpAffine(image.astype(np.float64), m, (w, h), flags=cv2.INTER_LINEAR)
    seen = ((xs + 0.5) * out).sum() / out.sum(), ((ys + 0.5) * out).sum() / out.sum()
    v = ann.Vertebra("T8", (15.0, 28.0, 25.0, 35.0), 0, points=(point,) * 6)
    moved = tg.warp_vertebra(v, (h, w), angle, scale, flip=flip)
    np.testing.assert_allclose(moved.points[0], seen, atol=0.02)
    corners = tg.warp_vertebra(ann.Vertebra("T8", v.box, 0), (h, w), angle, scale, flip=flip).box
    assert corners[0] < moved.points[0][0] < corners[2] and corners[1] < moved.points[0][1] < corners[3]
    if angle == 0.0:
        assert corners == pytest.approx((w - 25.0, 28.0, w - 15.0, 35.0))


def _hand_maps(spec, vertebrae):
    """Head outputs with a peak per (row, col, level, grade) and a 40×32-pixel box."""
    h, w = spec.grid
    maps = {"heat": np.zeros((h, w)), "size": np.zeros((h, w, 2)), "offset": np.full((h, w, 2), 0.5),
            "level": np.zeros((h, w, len(LEVELS))), "grade": np.zeros((h, w, 4))}
    for i, j, level, grade in vertebrae:
        around = (slice(max(0, i - 1), i + 2), slice(max(0, j - 1), j + 2))
        maps["heat"][around] = np.maximum(maps["heat"][around], 0.5)
        maps["heat"][i, j] = 0.9
        maps["size"][i, j] = (5.0, 4.0)
        maps["level"][i, j, LEVELS.index(level)] = 5.0
        maps["grade"][i, j, grade] = 5.0
    return maps


def test_decoding_two_vertebrae_a_gap_and_the_border():
    spec = tg.HeadSpec()
    two = dec.decode(_hand_maps(spec, [(20, 30, "T8", 0), (26, 30, "T9", 2)]), spec)
    assert [d.level for d in two] == ["T8", "T9"] and [d.grade for d in two] == [0, 2]
    assert two[0].box == (224.0, 148.0, 264.0, 180.0)  # centre (30.5 * 8, 20.5 * 8), 40 × 32
    assert two[1].fracture_probability == pytest.approx(1 - 1 / (3 + math.exp(5)))
    gap = dec.decode(_hand_maps(spec, [(20, 30, "T7", 0), (26, 30, "T8", 0), (38, 31, "T10", 1)]), spec)
    assert [d.level for d in gap] == ["T7", "T8", "T10"]
    border = dec.decode(_hand_maps(spec, [(0, 2, "T4", 0), (6, 2, "T5", 0)]), spec)
    assert [d.level for d in border] == ["T4", "T5"]
    assert border[0].box == (0.0, 0.0, 40.0, 20.0)  # clipped to the canvas
    assert dec.decode(_hand_maps(spec, []), spec) == []
    low = _hand_maps(spec, [(20, 30, "T8", 0)])
    assert dec.decode(low, spec, threshold=0.95) == []


def test_decoding_maps_back_to_the_original_image():
    spec = tg.HeadSpec()
    pixels = np.zeros((2000, 1400), np.uint16)
    pixels[500:900, 400:700] = 1000
    _, geometry = preprocess(pixels)
    found = dec.decode(_hand_maps(spec, [(60, 30, "T8", 0)]), spec, geometry)
    (d,) = found
    canvas_box = np.array([224.0, 468.0, 264.0, 500.0])
    back = geometry.to_original(canvas_box.reshape(2, 2)).ravel()
    np.testing.assert_allclose(d.box, back)


def test_split_takes_the_head_layout():
    spec = tg.HeadSpec(stride=16)
    assert spec.grid == (64, 32) and spec.channels == 34
    outputs = np.zeros((*spec.grid, spec.channels))
    outputs[..., 0] = 2.0
    maps = dec.split(outputs, spec)
    assert maps["heat"].shape == spec.grid and maps["heat"][0, 0] == pytest.approx(1 / (1 + math.exp(-2)))
    assert maps["points"].shape == (64, 32, 12) and maps["grade"].shape == (64, 32, 4)
    with pytest.raises(ValueError, match="shape"):
        dec.split(outputs[..., :-1], spec)
    with pytest.raises(ValueError, match="multiple"):
        tg.HeadSpec(stride=24)


# --- metrics -------------------------------------------------------------------------------------

def _det(box, score, level, grade, fracture):
    return dec.Detection(box, score, level, (1.0,), grade, (1 - fracture, fracture, 0.0, 0.0))


V = ann.Vertebra
TRUTH = {"A": [V("T11", (0, 0, 10, 10), 0), V("T12", (0, 12, 10, 22), 2), V("L1", (0, 24, 10, 34), 0)],
         "B": [V("T11", (0, 0, 10, 10), 3), V("T12", (0, 12, 10, 22), 0)],
         "C": [V("T11", (0, 0, 10, 10), 0)],
         "D": [V("T11", (0, 0, 10, 10), 0)]}
FOUND = {"A": [_det((0, 0, 10, 10), 0.9, "T11", 0, 0.1), _det((0, 13, 10, 23), 0.8, "T12", 1, 0.7),
               _det((50, 50, 60, 60), 0.4, "T4", 0, 0.3)],  # a false positive; L1 missed
         "B": [_det((0, 0, 10, 10), 0.9, "T12", 3, 0.95), _det((0, 12, 10, 22), 0.3, "T12", 1, 0.8),
               _det((0, 1, 10, 11), 0.5, "T12", 0, 0.1)],  # a duplicate of the first
         "D": [_det((0, 0, 10, 10), 0.9, "T11", 0, 0.75)]}  # C: nothing found


def test_matching_is_greedy_by_score():
    assert met.iou((0, 12, 10, 22), (0, 13, 10, 23)) == pytest.approx(90 / 110)
    assert met.match(TRUTH["A"], FOUND["A"]) == [(0, 0), (1, 1)]
    assert met.match(TRUTH["B"], FOUND["B"]) == [(0, 0), (1, 1)]  # the duplicate finds nothing left
    assert met.match(TRUTH["B"], FOUND["B"], threshold=0.95) == [(0, 0), (1, 1)]
    assert met.match(TRUTH["A"], FOUND["A"], threshold=0.95) == [(0, 0)]


def test_metrics_on_a_hand_worked_example():
    r = met.evaluate(TRUTH, FOUND, n_boot=100, seed=1)
    assert (r["images"], r["vertebrae"], r["detections"], r["matched"]) == (4, 7, 7, 5)
    value = {k: r[k]["value"] for k in met.METRICS}
    assert value["recall"] == pytest.approx(5 / 7)
    assert value["precision"] == pytest.approx(5 / 7)
    assert value["level_accuracy"] == pytest.approx(4 / 5)  # B's T11 named T12
    # fractured {0.7, 0.95} against intact {0.1, 0 (L1 missed), 0.8, 0 (C), 0.75}: 8 of 10 pairs
    assert value["fracture_auroc"] == pytest.approx(0.8)
    # no intact vertebra may be called (5 of them: 90% specificity allows 0.5): 0.95 only
    assert value["sensitivity_at_90_specificity"] == pytest.approx(0.5)
    # grades (0,0) (2,1) (0,0) (3,3) (0,1) (0,0) (0,0): squared disagreement 2 against
    # 118/7 expected from the margins -> 1 - 14/118
    assert value["grade_kappa"] == pytest.approx(1 - 14 / 118)
    # images A (0.7) and B (0.95) fractured, C (0) and D (0.75) not: 3 of 4 pairs
    assert value["image_auroc"] == pytest.approx(0.75)
    for k in met.METRICS:
        lo, hi = r[k]["ci95"]
        assert 0.0 <= lo <= hi <= 1.0
    assert met.evaluate(TRUTH, FOUND, n_boot=100, seed=1) == r  # the same resamples


def test_a_patient_bootstrap_draws_a_patients_images_together():
    one = met.evaluate(TRUTH, FOUND, n_boot=30, patients={k: "P1" for k in TRUTH})
    assert one["clusters"] == 1
    for k in met.METRICS:  # one patient: every resample is the sample
        assert one[k]["ci95"] == pytest.approx([one[k]["value"]] * 2)
    two = met.evaluate(TRUTH, FOUND, n_boot=100, patients={"A": "P1", "B": "P1", "C": "P2", "D": "P2"})
    assert two["clusters"] == 2 and two["recall"]["value"] == pytest.approx(5 / 7)
    # P1 alone: recall 4/5; P2 alone: 1/2 -> the interval spans exactly those
    assert two["recall"]["ci95"][0] == pytest.approx(0.5) and two["recall"]["ci95"][1] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no patient"):
        met.evaluate(TRUTH, FOUND, n_boot=10, patients={"A": "P1"})
    with pytest.raises(ValueError, match="without annotations"):
        met.evaluate(TRUTH, {"Z": []}, n_boot=10)


def test_a_batch_of_raw_outputs_decodes_per_image():
    """``decode_outputs``: the head's raw (B, h, w, 34) map, as prediction gets it, per image."""
    spec = tg.HeadSpec()
    patient = synthetic.simulate_patients(5, seed=4)[1]
    ph = synthetic.render_exam(patient, 0, domain="xray", scale=0.15, seed=4)
    _, geometry = preprocess(ph.pixels)
    truth = [ann.vertebra_from_dict(v.to_dict()) for v in ph.vertebrae]
    raw = np.zeros((2, *spec.grid, spec.channels), np.float32)
    raw[..., 0] = -8.0  # the second image: nothing above the threshold
    p = np.clip(tg.encode(truth, geometry, spec)["heat"], 1e-6, 1 - 1e-6)
    raw[0, ..., 0] = np.log(p / (1 - p))
    for name, values in _maps(tg.encode(truth, geometry, spec)).items():
        if name != "heat":
            raw[0, ..., spec.slices()[name]] = values
    found, empty = dec.decode_outputs(raw, spec, [geometry, None])
    assert empty == [] and [d.level for d in found] == [v.level for v in truth]
    single = dec.decode(dec.split(raw[0], spec), spec, geometry)
    assert [d.box for d in found] == [d.box for d in single]
    with pytest.raises(ValueError, match="geometries"):
        dec.decode_outputs(raw, spec, [geometry])

"""Synthetic cohort generator and spine phantom: determinism, files, labels, realism checks."""

import csv
import dataclasses
import json
import math

import cv2
import numpy as np
import pydicom
import pytest
from sklearn.linear_model import LogisticRegression, PoissonRegressor
from sklearn.metrics import roc_auc_score

from vertex_jax.data.manifest import REQUIRED, load_manifest
from vertex_jax.synthetic import cohort as synthetic, phantom

try:  # the product's reader; compared against when present
    from vertex_jax.data.io import read_image
except ImportError:  # pragma: no cover - only while the module is missing
    read_image = None

SCALE = 0.06
COHORT = dict(num_patients=26, scale=SCALE, seed=3, monochrome1_fraction=0.5, repeat_fraction=0.3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return synthetic.generate_cohort(out, workers=1, **COHORT)


def _rows(manifest):
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


def _decode(path, row):
    """Pixels as written (bone bright), through pydicom or OpenCV only."""
    if row["format"] == "png":
        return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == row["photometric"]
    assert int(ds.BitsStored) == int(row["bits_stored"])
    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = (2 ** int(ds.BitsStored) - 1) - arr
    return arr


def test_same_output_for_any_worker_count(cohort, tmp_path):
    again = synthetic.generate_cohort(tmp_path, workers=2, **COHORT)
    assert again.read_text() == cohort.read_text()
    for name in ("annotations.json", "followup.csv", "truth.json"):
        assert (again.parent / name).read_text() == (cohort.parent / name).read_text()
    for row in _rows(cohort):
        a = _decode(cohort.parent / row["path"], row)
        b = _decode(again.parent / row["path"], row)
        np.testing.assert_array_equal(a, b)


def test_phantom_is_deterministic_per_seed():
    def draw(seed):
        rng = np.random.default_rng(seed)
        anatomy = phantom.sample_anatomy(rng, age=70, bmi=25, t_score=-2.0)
        acq = phantom.sample_acquisition(rng, "xray", scale=0.1)
        return phantom.render(anatomy, acq, rng).pixels

    np.testing.assert_array_equal(draw(1), draw(1))
    assert draw(1).shape != draw(2).shape or not np.array_equal(draw(1), draw(2))


def test_manifest_schema_and_files(cohort):
    rows = _rows(cohort)
    with open(cohort, newline="") as f:
        header = next(csv.reader(f))
    assert tuple(header[: len(REQUIRED)]) == REQUIRED
    df = load_manifest(cohort)  # the product's validator: schema, values, files exist
    assert len(df) == len(rows) > COHORT["num_patients"]
    assert df["patient_id"].duplicated().any()  # repeat exams share a patient
    assert set(df["domain"]) == {"xray"}
    for row in rows:
        assert row["pvf"] in ("0", "1", "") and row["osteo"] in ("0", "1", "")
        assert row["sex"] in ("F", "M", "")
        if row["pvf"]:
            assert row["pvf"] == str(int(row["fracture_levels"] != ""))
        if row["osteo"]:
            assert row["osteo"] == str(int(float(row["t_score"]) <= -2.5))
    follow = _rows(cohort.parent / "followup.csv")
    assert {r["patient_id"] for r in follow} == {r["patient_id"] for r in rows}
    assert all(0 < float(r["followup_years"]) <= 10 for r in follow)
    assert {r["incident_fracture"] for r in follow} <= {"0", "1"}
    truth = json.loads((cohort.parent / "truth.json").read_text())
    assert truth["seed"] == COHORT["seed"] and truth["version"] == synthetic.VERSION
    assert truth["hazard"]["log_hazard"] == synthetic.HAZARD["log_hazard"]


def test_files_hold_the_rendered_pixels(cohort):
    rows = _rows(cohort)
    config = synthetic.CohortConfig.from_kwargs(monochrome1_fraction=0.5, repeat_fraction=0.3)
    formats = {(r["format"], r["compression"], r["photometric"]) for r in rows}
    assert {c for f, c, _ in formats if f == "dicom"} == {"none", "rle", "jpegls", "jpeg2000",
                                                          "jpeg-lossless"}
    assert {p for _, _, p in formats} >= {"MONOCHROME1", "MONOCHROME2"}
    assert "png" in {f for f, _, _ in formats}
    for row in rows:
        path = cohort.parent / row["path"]
        index = int(row["patient_id"][1:])
        patient = synthetic.simulate_patient(index, COHORT["seed"], config)
        truth = synthetic.render_exam(patient, int(row["exam"]), scale=SCALE, seed=COHORT["seed"],
                                      config=config).pixels
        assert truth.max() < 2 ** int(row["bits_stored"])
        assert truth.shape == (int(row["height"]), int(row["width"]))
        np.testing.assert_array_equal(_decode(path, row), truth, err_msg=row["path"])
        if row["format"] == "dicom":
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert ds.PatientID == row["patient_id"]
            spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
            assert float(spacing[0]) == pytest.approx(float(row["pixel_spacing_mm"]), rel=1e-3)
        if read_image is not None:
            got = read_image(path).pixels
            windowed = row["format"] == "dicom" and "WindowCenter" in pydicom.dcmread(
                path, stop_before_pixels=True)
            if windowed:
                order = np.argsort(truth.ravel(), kind="stable")  # a window: monotone map
                assert np.all(np.diff(got.ravel()[order].astype(np.int64)) >= 0)
            else:
                np.testing.assert_array_equal(got, truth)


def test_annotations_boxes_inside_images(cohort):
    rows = {r["image_id"]: r for r in _rows(cohort)}
    annotations = json.loads((cohort.parent / "annotations.json").read_text())
    assert set(annotations) == set(rows)
    for image_id, vertebrae in annotations.items():
        row = rows[image_id]
        h, w = int(row["height"]), int(row["width"])
        assert [v["level"] for v in vertebrae] == list(phantom.LEVELS)
        tops = [v["box"][1] for v in vertebrae]
        assert tops == sorted(tops)  # T4 at the top, L4 at the bottom
        for v in vertebrae:
            x0, y0, x1, y1 = v["box"]
            assert 0 <= x0 < x1 < w and 0 <= y0 < y1 < h
        fractured = [v["level"] for v in vertebrae if v["fractured"]]
        assert ";".join(fractured) == row["fracture_levels"]


def _heights(body, px_per_mm, positions=(-0.97, 0.0, 0.97), zoom=8):
    """Body heights (mm) at relative antero-posterior positions, measured on the rasterised
    outline turned back into the body's own frame (top to bottom endplate)."""
    a = body.angle
    d = body.outline - body.center
    uv = np.stack([d @ np.array([math.cos(a), -math.sin(a)]),
                   d @ np.array([math.sin(a), math.cos(a)])], 1)
    lo = uv.min(0) - 2
    size = np.ceil((uv.max(0) - lo + 2) * zoom).astype(int)
    mask = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillPoly(mask, [np.round((uv - lo) * zoom).astype(np.int32)], 1)
    umin, umax = uv[:, 0].min(), uv[:, 0].max()
    cols = [round(((p + 1) / 2 * (umax - umin) + umin - lo[0]) * zoom) for p in positions]
    rows = [np.flatnonzero(mask[:, c]) for c in cols]
    return np.array([r[-1] - r[0] + 1 for r in rows], np.float64) / zoom / px_per_mm


@pytest.mark.parametrize("kind", phantom.FRACTURE_TYPES)
@pytest.mark.parametrize("grade", [1, 2, 3])
def test_fracture_height_loss_matches_genant_grade(kind, grade):
    rng = np.random.default_rng(100 * grade + len(kind))
    fracture = phantom.make_fracture(rng, "T12", kind, grade)
    anatomy = phantom.sample_anatomy(rng, age=72, bmi=23, t_score=-2.8, fractures=(fracture,))
    acq = phantom.sample_acquisition(rng, "xray", scale=1.0)
    broken = phantom.layout(anatomy, acq)
    intact = phantom.layout(dataclasses.replace(anatomy, fractures=()), acq)
    for b, n in zip(broken.bodies, intact.bodies):
        loss = 1.0 - (_heights(b, broken.px_per_mm) / _heights(n, intact.px_per_mm)).min()
        if b.level == "T12":
            lo, hi = phantom.GENANT_LOSS[grade]
            assert lo - 0.015 <= loss <= hi + 0.005, (kind, grade, loss)
        else:
            assert abs(loss) < 0.01


def test_tabular_prevalences_and_missingness():
    patients = synthetic.simulate_patients(3000, seed=11)
    assert 0.22 <= np.mean([p.pvf for p in patients]) <= 0.36
    assert 0.28 <= np.mean([p.osteo for p in patients]) <= 0.42
    assert 0.55 <= np.mean([p.female for p in patients]) <= 0.65
    assert 0.07 <= np.mean([p.exams == 2 for p in patients]) <= 0.13
    ages = np.array([p.age for p in patients])
    assert ages.min() >= 50 and ages.max() <= 90
    for field in ("recorded_age", "recorded_sex", "recorded_bmi"):
        assert 0.015 <= np.mean([getattr(p, field) is None for p in patients]) <= 0.05
    for field in ("pvf_label", "osteo_label"):
        assert 0.005 <= np.mean([getattr(p, field) is None for p in patients]) <= 0.04
    counts = [len(p.fractures) for p in patients if p.pvf]
    assert set(counts) == {1, 2, 3}
    levels = [f.level for p in patients for f in p.fractures]
    junction = np.mean([lv in ("T11", "T12", "L1", "L2") for lv in levels])
    assert junction > 0.4


def test_clinical_variables_carry_partial_signal():
    patients = synthetic.simulate_patients(4000, seed=5)
    x = np.array([[p.age, p.female, p.bmi] for p in patients])
    y = np.array([p.osteo for p in patients])
    model = LogisticRegression().fit(x[:2000], y[:2000])
    auc = roc_auc_score(y[2000:], model.predict_proba(x[2000:])[:, 1])
    assert 0.6 <= auc <= 0.85


def test_followup_recovers_true_log_hazards():
    """Exponential proportional hazards = Poisson regression of events on exposure time."""
    patients = synthetic.simulate_patients(20000, seed=9)
    x = np.array([[p.t_score + 2.0, p.pvf, (p.age - 70.0) / 10.0] for p in patients])
    t = np.array([p.followup_years for p in patients])
    events = np.array([p.incident_fracture for p in patients], np.float64)
    fit = PoissonRegressor(alpha=0.0, max_iter=500).fit(x, events / t, sample_weight=t)
    truth = synthetic.HAZARD["log_hazard"]
    np.testing.assert_allclose(fit.coef_, [truth["t_score_plus_2"], truth["pvf"],
                                           truth["age_minus_70_per_decade"]], atol=0.1)
    assert fit.intercept_ == pytest.approx(math.log(synthetic.HAZARD["baseline_per_year"]), abs=0.1)
    assert 0.08 <= events.mean() <= 0.25 and t.max() <= 10.0


def _rendered(n, seed, scale=0.05, domain="xray"):
    patients = synthetic.simulate_patients(n, seed=seed)
    out = [synthetic.render_exam(p, 0, domain=domain, scale=scale, seed=seed) for p in patients]
    return patients, out


def test_no_global_brightness_shortcut():
    patients, images = _rendered(200, seed=21)
    mean = np.array([im.pixels.mean() / (2**im.bits_stored - 1) for im in images])
    for label in ("pvf", "osteo"):
        y = np.array([getattr(p, label) for p in patients])
        assert 0.35 <= roc_auc_score(y, mean) <= 0.65, label


@pytest.mark.parametrize("domain", phantom.DOMAINS)
def test_osteoporosis_is_visible_in_vertebral_bodies(domain):
    """After histogram equalisation, trabecular bone of osteoporotic spines ranks lower."""
    patients, images = _rendered(120, seed=4, scale=0.1, domain=domain)
    score = []
    for im in images:
        eq = cv2.equalizeHist(cv2.normalize(im.pixels, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U))
        inner = []
        for v in im.vertebrae:
            x0, y0, x1, y1 = v.box
            dx, dy = (x1 - x0) // 4, (y1 - y0) // 4
            inner.append(eq[y0 + dy:y1 - dy + 1, x0 + dx:x1 - dx + 1].mean())
        score.append(np.mean(inner))
    y = np.array([p.osteo for p in patients])
    assert roc_auc_score(y, -np.array(score)) > 0.75


def test_full_size_images_match_the_papers_ranges():
    rng = np.random.default_rng(0)
    xray = [phantom.sample_acquisition(rng, "xray", scale=1.0) for _ in range(3000)]
    h, w = np.array([a.height for a in xray]), np.array([a.width for a in xray])
    assert 2650 <= h.mean() <= 2950 and 1850 <= w.mean() <= 2100
    assert h.min() >= 1024 and h.max() <= 8383 and w.min() >= 850 and w.max() <= 3520
    assert np.mean(h > w) > 0.85
    assert {a.bits_stored for a in xray} <= set(range(10, 17))
    vfa = [phantom.sample_acquisition(rng, "vfa", scale=1.0) for _ in range(3000)]
    h, w = np.array([a.height for a in vfa]), np.array([a.width for a in vfa])
    assert 1050 <= h.mean() <= 1150 and 378 <= w.mean() <= 395
    assert h.min() >= 912 and h.max() <= 1656 and w.min() >= 378 and w.max() <= 567
    assert {a.bits_stored for a in vfa} <= set(range(8, 13))
    for domain in phantom.DOMAINS:  # one full-size render each
        anatomy = phantom.sample_anatomy(rng, age=66, bmi=27, t_score=-1.0)
        acq = phantom.sample_acquisition(rng, domain, scale=1.0)
        img = phantom.render(anatomy, acq, rng)
        assert img.pixels.shape == (acq.height, acq.width) and img.pixels.dtype == np.uint16
        assert img.pixels.max() < 2**img.bits_stored and img.pixels.std() > 0


def test_difficulty_knobs():
    patients = synthetic.simulate_patients(600, seed=2, min_grade=3, cleft_fraction=1.0)
    assert {(f.grade, f.cleft) for p in patients for f in p.fractures} == {(3, True)}
    patients = synthetic.simulate_patients(600, seed=2, min_grade=1, cleft_fraction=0.0)
    assert {(f.grade, f.cleft) for p in patients for f in p.fractures} == {(1, False), (2, False),
                                                                           (3, False)}
    with pytest.raises(TypeError, match="unknown cohort option"):
        synthetic.simulate_patients(3, osteo_contrast=1.0)
    with pytest.raises(ValueError, match="min_grade"):
        synthetic.CohortConfig(min_grade=4)
    with pytest.raises(ValueError, match="formats"):
        synthetic.parse_formats("png,gif")
    assert phantom.bone_density(-2.5, osteo_effect=0.0) == 1.0
    assert phantom.bone_density(-2.5) < phantom.bone_density(0.0)


def test_cli_writes_cohort_and_montage(tmp_path, capsys):
    figure = tmp_path / "fig.png"
    synthetic.main(["--out", str(tmp_path / "c"), "--num-patients", "3", "--domain", "vfa",
                    "--scale", "0.1", "--workers", "1", "--formats", "png,jpegls",
                    "--montage", str(figure), "--min-grade", "2"])
    printed = capsys.readouterr().out
    assert "images of 3 patients" in printed and "pvf" in printed
    rows = _rows(tmp_path / "c" / "manifest.csv")
    assert {r["domain"] for r in rows} == {"vfa"}
    assert {r["compression"] for r in rows} <= {"", "jpegls"}
    img = cv2.imread(str(figure))
    assert img is not None and img.shape[0] >= 400 and img.shape[1] > img.shape[0]

"""Post-hoc calibration: each method against an independent fit, the maps' properties, the
card round trip, and predict / evaluate / the CLI using the calibrated values."""

import hashlib
import json
import logging

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import isotonic_regression
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from checkpoints import TASKS, write_checkpoint
from conftest import write_png_cohort
from vertex_jax.calibrate import Calibration, CalibrationError, TaskMap, fit_calibration, fit_map, maps
from vertex_jax.calibrate.run import calibrate_outputs, check_split, store
from vertex_jax.evaluate.calibration import expected_calibration_error
from vertex_jax.inference import load_trained
from vertex_jax.runs import read_json_item


def miscalibrated(n: int = 600, seed: int = 0, scale: float = 2.5, shift: float = -1.2):
    """Labels drawn from sigmoid(true logit); the model's logit is scale * true + shift."""
    rng = np.random.default_rng(seed)
    true = rng.normal(0.0, 1.3, n)
    y = (rng.random(n) < expit(true)).astype(float)
    return scale * true + shift, y


def log_loss(z, y):
    return float(np.mean(np.logaddexp(0, z) - y * z))


def test_temperature_minimises_the_validation_log_loss():
    z, y = miscalibrated()
    t = fit_map("temperature", z, y).params["temperature"]
    grid = np.exp(np.linspace(np.log(t) - 0.05, np.log(t) + 0.05, 2001))
    losses = [log_loss(z / g, y) for g in grid]
    assert abs(grid[int(np.argmin(losses))] - t) <= t * 0.05 / 1000 + 1e-12
    beta = 1 / t  # d/d(beta) of the mean log-loss of z * beta is zero at the optimum
    assert abs(np.mean((expit(beta * z) - y) * z)) < 1e-6
    assert t > 1.5  # the logits were stretched by 2.5 (and shifted, which T cannot undo)


def test_platt_equals_scikit_learns_unpenalised_logistic_regression():
    z, y = miscalibrated(seed=1)
    got = fit_map("platt", z, y).params
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(z[:, None], y)
    np.testing.assert_allclose([got["slope"], got["intercept"]], [ref.coef_[0, 0], ref.intercept_[0]],
                               atol=1e-5)
    np.testing.assert_allclose(got["slope"], 1 / 2.5, atol=0.1)  # the stretch and shift undone
    np.testing.assert_allclose(got["intercept"], 1.2 / 2.5, atol=0.2)


def test_an_intercept_update_keeps_the_slope_and_matches_the_prevalence():
    """Recalibration in the large: the score equation of the intercept says the mean fitted
    probability equals the observed rate; evaluate's calibration intercept (the same model,
    written independently with Newton steps) is then zero on the fitting cases."""
    from vertex_jax.evaluate.calibration import recalibration

    z, y = miscalibrated(n=400, seed=3)
    previous = fit_map("platt", z[:200], y[:200])
    site_z, site_y = z[200:] + 0.8, y[200:]  # the site's logits run high
    updated = maps.update_intercept(previous, site_z, site_y)
    assert updated.method == "platt" and updated.params["slope"] == previous.params["slope"]
    p = updated.probabilities(site_z)
    assert p.mean() == pytest.approx(site_y.mean(), abs=1e-7)
    assert recalibration(site_y, p)["intercept"] == pytest.approx(0.0, abs=1e-6)
    temperature = fit_map("temperature", z, y)
    from_t = maps.update_intercept(temperature, site_z, site_y)
    assert from_t.params["slope"] == pytest.approx(1 / temperature.params["temperature"])
    assert maps.update_intercept(None, site_z, site_y).params["slope"] == 1.0
    with pytest.raises(CalibrationError, match="isotonic"):
        maps.update_intercept(fit_map("isotonic", z, y), site_z, site_y)


def test_isotonic_equals_scipys_pool_adjacent_violators_and_interpolates_like_sklearn(caplog):
    z, y = miscalibrated(n=300, seed=2)
    with caplog.at_level(logging.WARNING):
        m = TaskMap("isotonic", maps._fit_isotonic(z, y, min_gap=0.0), z.size, int(y.sum()))
    assert "below 1000" in caplog.text  # too few cases for isotonic: the user is told
    order = np.argsort(z)
    ref = isotonic_regression(y[order]).x  # scipy's PAVA on the labels in logit order
    np.testing.assert_allclose(m.probabilities(z[order]), ref, atol=1e-6)
    new = np.linspace(z.min() - 1, z.max() + 1, 500)
    sk = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(z, y)
    np.testing.assert_allclose(m.probabilities(new), sk.predict(new), atol=1e-6)
    # as served: knots at least ISOTONIC_MIN_GAP apart, the same fit between them
    served = fit_map("isotonic", z, y)
    knots = np.array(served.params["knots"])
    assert np.all(np.diff(knots) >= maps.ISOTONIC_MIN_GAP) and knots[[0, -1]].tolist() == [z.min(), z.max()]
    np.testing.assert_allclose(served.probabilities(knots), sk.predict(knots), atol=1e-12)
    assert len(knots) < len(m.params["knots"])


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_maps_are_monotone_and_the_same_in_numpy_and_jax(method):
    z, y = miscalibrated(seed=3)
    m = fit_map(method, z, y)
    grid = np.linspace(-8, 8, 4001)
    p = m.probabilities(grid)
    assert np.all(np.diff(p) >= -1e-12) and p.min() >= 0 and p.max() <= 1
    got = np.asarray(m.probabilities(jnp.asarray(grid, jnp.float32), xp=jnp))
    # float32 rounds z and the knots by 2^-24 relative; the map's steepest slope amplifies that
    if method == "isotonic":
        knots, values = np.array(m.params["knots"]), np.array(m.params["values"])
        steepest = np.max(np.diff(values) / np.diff(knots))
        spread = 8 + np.abs(knots).max()
    else:
        steepest, spread = 0.25 * max(1 / m.params.get("temperature", 1), abs(m.params.get("slope", 0))), 8 + 5
    np.testing.assert_allclose(got, p, rtol=0, atol=2.0 ** -20 * (1 + steepest * spread))
    if method != "isotonic":  # strictly monotone: the ranking, hence AUROC, is unchanged
        assert np.all(np.diff(p) > 0)
        assert roc_auc_score(y, m.probabilities(z)) == pytest.approx(roc_auc_score(y, z), abs=1e-9)


def test_calibration_halves_the_error_of_miscalibrated_scores():
    z, y = miscalibrated(n=4000, seed=4)
    zv, yv = miscalibrated(n=4000, seed=5)
    raw = expected_calibration_error(yv, expit(zv))["value"]
    for method in ("platt", "isotonic"):
        cal = expected_calibration_error(yv, fit_map(method, z, y).probabilities(zv))["value"]
        assert cal < raw / 2, (method, cal, raw)


def test_expected_calibration_error_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.12, 0.85, 0.95, 0.9])
    # bins [0, .1]: {.05|0}; (.1, .2]: {.15|0, .12|1}; (.8, .9]: {.85|1, .9|0}; (.9, 1]: {.95|1}
    expected = (abs(0.05 - 0) + abs(0.27 - 1) + abs(1.75 - 1) + abs(0.95 - 1)) / 6
    got = expected_calibration_error(y, p, 10, n_boot=200, rng=np.random.default_rng(0))
    assert got["value"] == pytest.approx(expected)
    lo, hi = got["ci"]
    assert 0 <= lo <= hi <= 1


def test_fitting_refuses_the_test_split_one_class_and_separated_logits():
    with pytest.raises(CalibrationError, match="test"):
        check_split("test")
    with pytest.raises(CalibrationError, match="one class"):
        fit_map("temperature", np.array([0.1, 0.5]), np.array([1.0, 1.0]))
    with pytest.raises(CalibrationError, match="separate"):
        fit_map("platt", np.array([-1.0, -0.5, 0.5, 1.0]), np.array([0.0, 0.0, 1.0, 1.0]))
    labels, mask = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]), np.array([[1, 1], [1, 1], [1, 0]])
    cal, skipped = fit_calibration("temperature", np.array([[1.0, 0.2], [-1.0, 0.3], [0.5, 0.1]]), labels, mask,
                                   TASKS, {"split": "val"})
    assert set(cal.maps) == {"pvf"} and "all of one class" in skipped["osteo"]


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_card_round_trip_predict_and_evaluate_use_the_calibration(tmp_path):
    from vertex_jax.evaluate.report import build_report
    from vertex_jax.predict.__main__ import main as predict_main

    run = write_checkpoint(tmp_path / "run")
    step = run / "checkpoints" / "3"
    arrays = _digest(step / "state")
    assert load_trained(run).calibration is None
    z, y = miscalibrated(n=200, seed=6)
    labels = np.stack([y, 1 - y], axis=1)
    cal = calibrate_outputs("platt", np.stack([z, -z], axis=1), labels, np.ones_like(labels), TASKS,
                            split="val", domain="xray", step=3)
    (run / "model_card.json").write_text(json.dumps(read_json_item(step, "card")))  # as training writes it
    store(step, cal)
    assert _digest(step / "state") == arrays  # a new card, the same arrays
    card_page = (run / "model_card.md").read_text()  # the Markdown card rendered again
    assert "Method `platt`, fitted on split `val` (xray) with the outputs of step 3" in card_page
    assert "**Synthetic data only**" in card_page and "not for clinical use" in card_page
    trained = load_trained(step)
    assert trained.calibration == cal and trained.card["calibration"]["fitted_on"]["split"] == "val"
    assert Calibration.from_card(json.loads(json.dumps(trained.card))) == cal

    write_png_cohort(tmp_path / "cohort", 12)
    out = tmp_path / "scores.csv"
    assert predict_main(["--checkpoint", str(run), "--input", str(tmp_path / "cohort" / "manifest.csv"),
                         "--out", str(out), "--no-progress"]) == 0
    scores = pd.read_csv(out)
    logits = scores[[f"{t}_logit" for t in TASKS]].to_numpy()
    np.testing.assert_allclose(scores[[f"{t}_prob" for t in TASKS]], cal.probabilities(logits, TASKS),
                               atol=1e-6)
    np.testing.assert_allclose(scores[[f"{t}_prob_raw" for t in TASKS]], expit(logits), atol=1e-6)
    assert set(scores["calibration"]) == {"platt"}

    scores["split"] = np.where(np.arange(len(scores)) % 2, "val", "test")
    report = build_report(scores, tmp_path / "eval", bootstrap=20)
    entry = report["models"][next(iter(report["models"]))]["tasks"]["osteo"]
    assert entry["probability_column"] == "osteo_prob" and entry["raw"]["probability_column"] == "osteo_prob_raw"
    assert entry["overall"]["calibration"]["ece"]["value"] != entry["raw"]["calibration"]["ece"]["value"]
    assert "raw (uncalibrated)" in (tmp_path / "eval" / "report.html").read_text()

    store(step, None)  # removed again: the model says it has none
    assert load_trained(run).calibration is None
    assert "None: the probabilities are the network's sigmoid outputs" in (run / "model_card.md").read_text()


def test_taskmap_dict_round_trip_and_unknown_method():
    m = TaskMap("isotonic", {"knots": [0.0, 1.0], "values": [0.2, 0.7]}, 10, 4)
    assert TaskMap.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    np.testing.assert_allclose(m.probabilities(np.array([-1.0, 0.5, 2.0])), [0.2, 0.45, 0.7])
    with pytest.raises(CalibrationError, match="unknown calibration method"):
        TaskMap.from_dict({"method": "beta"})


def test_cli_refits_a_run_on_its_validation_split_and_refuses_test(tmp_path, capsys):
    from configs.xray import get_config
    from vertex_jax import runs
    from vertex_jax.calibrate.__main__ import main as calibrate_main

    run = write_checkpoint(tmp_path / "run")
    manifest = write_png_cohort(tmp_path / "cohort", 20)
    config = get_config("tiny")
    config.data.manifest = str(tmp_path / "cohort" / "manifest.csv")
    runs.config_path(run).write_text(config.to_json_best_effort())
    manifest.assign(split=np.where(np.arange(20) < 12, "val", "test"))[["image_id", "patient_id", "split"]] \
        .to_csv(runs.splits_path(run), index=False)
    assert calibrate_main(["--workdir", str(run), "--split", "test", "--no-progress"]) == 2
    assert "refusing to fit the calibration on split 'test'" in capsys.readouterr().err
    assert calibrate_main(["--workdir", str(run), "--method", "platt", "--no-progress"]) == 0
    assert "calibrated" in capsys.readouterr().out
    cal = load_trained(run).calibration
    assert cal.fitted_on["split"] == "val" and cal.fitted_on["method"] == "platt"
    labelled = manifest.iloc[:12]
    for task in TASKS:  # fitted on the 12 validation images' labelled cases only
        assert cal.maps[task].n == int((labelled[task] != "").sum())
    assert calibrate_main(["--workdir", str(run), "--method", "none"]) == 0
    assert load_trained(run).calibration is None

"""Clinical evaluation report: every statistic against an independent reference.

References: scikit-learn (AUROC, ROC curve, confusion matrix, F1, Brier, logistic regression,
calibration curve), scipy (Wilson interval), a direct O(n^2) DeLong computation, and the
figures pROC publishes in its own test-suite for its aSAH data set (var, cov, ci.auc, roc.test).
"""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats
from scipy.special import expit, logit
from sklearn import metrics
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression

from vertex_jax.cli import user_errors
from vertex_jax.evaluate import ScoresError, build_report, read_scores
from vertex_jax.evaluate.__main__ import main
from vertex_jax.evaluate.calibration import recalibration, reliability_bins
from vertex_jax.evaluate.compare import paired_bootstrap, paired_delong
from vertex_jax.evaluate.intervals import stratified_weights, wilson
from vertex_jax.evaluate.roc import (auroc, auroc_summary, bootstrap_auroc, delong_covariance, roc_curve,
                                     weighted_auroc)
from vertex_jax.evaluate.subgroups import age_band_labels, define_subgroups
from vertex_jax.evaluate.thresholds import choose_thresholds, operating_point
from vertex_jax.html_page import page, png_image, table
from vertex_jax.train.metrics import auroc_per_task

# pROC's aSAH data (Turck et al. 2010, 113 patients), from pROC's data/aSAH.RData: outcome
# (1 = Poor), gender, WFNS grade, S100B and NDKA, one character / value per patient.
ASAH_POOR = ("00001101001011001011101000000000100110110000000001100010001010011101101111000110100000"
             "010000000000001111110001000")
ASAH_SEX = ("FFFFFMMMFFMFMMFFMFFMFFFMFFMFFMFFFFFMFFMFFFFMFMMMMFFMFFFFMFMFFMFFFMMMMFFFMFMFMMMFFFFFMFMMFMF"
            "FFFFFMFMFMFFFMFFFMMFFM")
ASAH_WFNS = ("1111325412525512522521111212113421454142551124112552125122215112521452441412142123242145"
             "1154221113125225552445111")
ASAH_S100B = """0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 0.07 0.33
0.09 0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35 0.48 0.09 0.96 0.25 0.5 0.46
0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 0.06 0.13 2.07 0.1 0.14 0.15 0.07 0.06 0.77 0.05 0.09 0.3
0.03 0.09 0.04 0.23 0.7 0.09 0.27 0.71 0.08 0.26 0.08 0.16 0.09 0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1
0.32 0.22 0.07 0.05 0.24 0.38 0.1 0.15 0.08 0.14 0.1 0.07 0.04 0.19 0.56 0.14 0.58 0.32 0.82 0.74 0.15 0.47
0.17 0.44 0.15 0.5 0.48"""
ASAH_NDKA = """3.01 8.54 8.09 10.42 17.4 12.75 6 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 11.6 16.11
32.37 54.82 32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 9.85 18.21 5.03 14.04 21.93 8.02
7.42 8.38 6.59 9.63 13.12 7.96 14.34 41.43 7.63 7.06 12.59 13.56 3.87 9.44 7.66 12.98 419.19 27.19 22.27 9.95
21.22 11.73 10.4 58.83 6.39 11.09 12.22 13.67 17.21 22.63 12.9 9.7 21.57 8.23 72.57 15.54 10.51 10.6 14.57
5.19 9.63 4.61 21.48 17.3 12.71 9.44 11.07 19.46 10.83 5.37 11.97 7.75 9.83 10.55 28.49 8.53 12.57 12.9 46.83
11.68 12.67 9.01 9.57 34.06 11.72 14.26 47.61 11.67 24.58 10.33 13.87 15.89 22.43 6.79 13.45"""


@pytest.fixture(scope="module")
def asah():
    y = np.array([int(c) for c in ASAH_POOR])
    female = np.array([c == "F" for c in ASAH_SEX])
    wfns = np.array([float(c) for c in ASAH_WFNS])
    s100b, ndka = np.array(ASAH_S100B.split(), float), np.array(ASAH_NDKA.split(), float)
    assert len(y) == len(female) == len(wfns) == len(s100b) == len(ndka) == 113 and y.sum() == 41
    return y, female, wfns, s100b, ndka


def cohort(n=600, seed=0, splits=("val", "test"), shift=0.0) -> pd.DataFrame:
    """A scores.csv table: two tasks, some tied probabilities, one missing age, one unlabelled case."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "image_id": [f"img{i:04d}" for i in range(n)], "patient_id": [f"P{i // 2}" for i in range(n)],
        "path": [f"img/{i}.dcm" for i in range(n)], "domain": "xray",
        "split": rng.choice(list(splits), n), "exam": 0,
        "age": rng.uniform(50, 92, n).round(1), "sex": rng.choice(["F", "M"], n, p=[0.7, 0.3]),
        "bmi": rng.uniform(18, 32, n).round(1)})
    for task, prev in (("pvf", 0.25), ("osteo", 0.4)):
        y = (rng.random(n) < prev).astype(int)
        z = -1.2 + 2.0 * y + rng.normal(0, 1, n) + shift
        df[task] = y.astype(str)
        df[f"{task}_prob"] = np.round(expit(z), 3)  # rounding makes ties
        df[f"{task}_logit"] = z
    df.loc[7, "age"] = np.nan
    df.loc[11, "pvf"] = ""
    return df


def write(df: pd.DataFrame, path) -> str:
    df.to_csv(path, index=False)
    return str(path)


# ---------------------------------------------------------------- AUROC, ROC curve, DeLong


def test_auroc_and_roc_curve_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    p = np.round(rng.random(300) * 0.6 + 0.4 * y, 2)  # many ties
    assert auroc(y, p) == pytest.approx(metrics.roc_auc_score(y, p), abs=1e-12)
    diff = p[y][:, None] - p[~y][None, :]  # Mann-Whitney from the definition
    assert auroc(y, p) == pytest.approx(np.mean((diff > 0) + 0.5 * (diff == 0)), abs=1e-12)
    fpr, tpr, thr = roc_curve(y, p)
    ref = metrics.roc_curve(y, p, drop_intermediate=False)
    for mine, theirs in zip((fpr, tpr, thr), ref):
        np.testing.assert_allclose(mine, theirs)
    assert np.isnan(auroc(np.zeros(5), np.arange(5)))


def test_auroc_roc_curve_and_weighted_auroc_hand_worked():
    # Positives 0.9, 0.4; negatives 0.4, 0.2, 0.1. 0.9 beats all three (3); 0.4 ties one and
    # beats two (2.5): AUROC 5.5 / 6. Weights 2 and 1 on the positives: (2*3 + 2.5) / (3*3).
    y, p = np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.4, 0.4, 0.2, 0.1])
    assert auroc(y, p) == pytest.approx(5.5 / 6)
    assert weighted_auroc(p[:2], p[2:], np.array([2.0, 1.0])) == pytest.approx(8.5 / 9)
    assert np.isnan(weighted_auroc(np.array([]), p[2:], np.array([])))
    fpr, tpr, thr = roc_curve(y, p)
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.4, 0.2, 0.1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    # Training's validation AUROC per task: known labels only, NaN with one class.
    labels = np.array([[1, 1], [1, 0], [0, 0], [0, 1], [0, 0]], float)
    mask = np.array([[1, 1], [1, 1], [1, 1], [1, 0], [1, 0]], float)
    probs = np.stack([p, p], axis=1)
    per_task = auroc_per_task(labels, probs, mask, ("a", "b"))
    assert per_task["a"] == pytest.approx(5.5 / 6) and per_task["b"] == pytest.approx(1.0)
    assert np.isnan(auroc_per_task(labels, probs, mask * [1, 0], ("a", "b"))["b"])  # no known label


def _direct_delong(y, scores):
    """DeLong (1988) structural components straight from the definition, O(n_pos * n_neg)."""
    y = np.asarray(y, bool)
    v10, v01 = [], []
    for s in scores:
        diff = s[y][:, None] - s[~y][None, :]
        psi = (diff > 0) + 0.5 * (diff == 0)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10, v01 = np.array(v10), np.array(v01)
    return v10.mean(axis=1), np.cov(v10) / y.sum() + np.cov(v01) / (~y).sum()


def test_delong_matches_direct_computation():
    rng = np.random.default_rng(2)
    y = rng.random(250) < 0.35
    a = np.round(rng.normal(size=250) + y, 1)
    b = np.round(0.5 * a + rng.normal(size=250) + 0.5 * y, 1)
    aucs, cov = delong_covariance(y, np.stack([a, b]))
    ref_aucs, ref_cov = _direct_delong(y, [a, b])
    np.testing.assert_allclose(aucs, ref_aucs, rtol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10)
    test = paired_delong(y, a, b)
    se = np.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert test["diff"] == pytest.approx(ref_aucs[0] - ref_aucs[1])
    assert test["se"] == pytest.approx(se)
    assert test["p"] == pytest.approx(2 * stats.norm.sf(abs(ref_aucs[0] - ref_aucs[1]) / se))
    assert test["ci"] == pytest.approx([test["diff"] - 1.959963985 * se, test["diff"] + 1.959963985 * se])


def test_delong_matches_published_proc_figures(asah):
    """pROC tests/testthat: test-var.R, test-cov.R, test-ci.auc.R, test-roc.test.R (DeLong)."""
    y, female, wfns, s100b, ndka = asah
    aucs, cov = delong_covariance(y, np.stack([wfns, ndka, s100b]))
    np.testing.assert_allclose(aucs, [0.823678861788618, 0.611957994579946, 0.731368563685637], rtol=1e-9)
    np.testing.assert_allclose(np.diag(cov), [0.00146991470882363, 0.0031908105493913, 0.00266868245717244],
                               rtol=1e-9)
    np.testing.assert_allclose([cov[0, 1], cov[1, 2], cov[2, 0]],
                               [-0.000532967856762438, -0.000756164938056579, 0.00119615567376754], rtol=1e-9)
    ci = auroc_summary(y, ndka, n_boot=0, rng=np.random.default_rng(0))["delong"]["ci"]
    np.testing.assert_allclose(ci, [0.501244999271703, 0.722670989888189], rtol=1e-9)
    ci_f = auroc_summary(y[female], ndka[female], n_boot=0, rng=np.random.default_rng(0))["delong"]["ci"]
    np.testing.assert_allclose(ci_f, [0.5261398281, 0.8081458862], rtol=1e-8)
    for a, b, z, p, lo, hi in [
            (wfns, s100b, 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
            (wfns, ndka, 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
            (ndka, s100b, -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094)]:
        t = paired_delong(y, a, b)
        np.testing.assert_allclose([t["z"], t["p"], *t["ci"]], [z, p, lo, hi], rtol=1e-8)
    same = paired_delong(y, wfns, wfns)
    assert same["z"] == 0 and same["p"] == 1


def test_bootstrap_is_a_stratified_resample_and_seeded(asah):
    y, _, wfns, s100b, _ = asah
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    reps = bootstrap_auroc(y, np.stack([wfns, s100b]), n_boot=300, rng=np.random.default_rng(5))
    weights = list(stratified_weights(n_pos, n_neg, 300, np.random.default_rng(5)))
    w_pos, w_neg = (np.concatenate(w) for w in zip(*weights))
    assert (w_pos.sum(axis=1) == n_pos).all() and (w_neg.sum(axis=1) == n_neg).all()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for b in range(0, 300, 37):  # each replicate = AUROC of the resample (sklearn with case weights)
        w = np.zeros(y.size)
        w[pos], w[neg] = w_pos[b], w_neg[b]
        for k, s in enumerate((wfns, s100b)):
            assert reps[b, k] == pytest.approx(metrics.roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    again = bootstrap_auroc(y, np.stack([wfns, s100b]), n_boot=300, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(reps, again)
    # bootstrap and DeLong agree on the spread; paired bootstrap p close to DeLong's
    assert reps[:, 1].std() == pytest.approx(np.sqrt(0.00266868245717244), rel=0.15)
    boot = paired_bootstrap(y, wfns, s100b, n_boot=2000, rng=np.random.default_rng(0))
    assert boot["p"] == pytest.approx(0.0271757822291882, abs=0.015)
    assert boot["ci"][0] > 0 and boot["ci"][1] == pytest.approx(0.174, abs=0.03)


def test_wilson_matches_the_formula_and_newcombe():
    def formula(k, n, z):  # Wilson (1927), no continuity correction
        centre, half = (k + z * z / 2) / (n + z * z), z / (n + z * z) * np.sqrt(k * (n - k) / n + z * z / 4)
        return [centre - half, centre + half]

    for k, n in [(0, 10), (3, 10), (10, 10), (47, 113), (1, 1)]:
        for level in (0.95, 0.9):
            assert wilson(k, n, level) == pytest.approx(formula(k, n, stats.norm.ppf(0.5 + level / 2)), abs=1e-12)
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == 1
    # Newcombe (1998), Stat Med 17:857, Table II, method 3 (score interval without correction).
    for (k, n), ci in {(81, 263): [0.2553, 0.3662], (15, 148): [0.0624, 0.1605], (0, 20): [0.0, 0.1611],
                       (1, 29): [0.0061, 0.1718]}.items():
        assert wilson(k, n) == pytest.approx(ci, abs=5e-5)
    assert wilson(0, 0) is None


# ---------------------------------------------------------------- thresholds and operating points


def test_thresholds_follow_their_definitions():
    rng = np.random.default_rng(3)
    y = rng.random(400) < 0.3
    p = np.round(expit(rng.normal(size=400) + 1.5 * y - 1), 3)
    chosen = choose_thresholds(y, p)
    fpr, tpr, thr = metrics.roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    assert chosen["youden"]["threshold"] == thr[np.argmax(tpr - fpr)]
    assert chosen["sensitivity_90"]["threshold"] == thr[tpr >= 0.9].max()
    assert chosen["specificity_90"]["threshold"] == thr[fpr <= 0.1].min()
    for name, c in chosen.items():
        called = p >= c["threshold"]
        assert c["sensitivity"] == pytest.approx(metrics.recall_score(y, called))
        assert c["specificity"] == pytest.approx(metrics.recall_score(~y, ~called))
    assert chosen["sensitivity_90"]["sensitivity"] >= 0.9
    assert chosen["specificity_90"]["specificity"] >= 0.9
    # spec 90% unreachable with any positive call: the two top scores are negatives out of 5
    few = choose_thresholds(np.array([0, 0, 1, 0, 1, 0, 0]), np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.2, 0.3]))
    assert few["specificity_90"]["threshold"] is None and "specificity" in few["specificity_90"]["reason"]
    one = choose_thresholds(np.zeros(4, bool), np.arange(4) / 4)
    assert all(v["threshold"] is None and "one class" in v["reason"] for v in one.values())


def test_operating_point_matches_sklearn():
    rng = np.random.default_rng(4)
    y = rng.random(300) < 0.3
    p = expit(rng.normal(size=300) + 1.2 * y - 0.8)
    op = operating_point(y, p, 0.4, n_boot=500, rng=np.random.default_rng(0))
    called = p >= 0.4
    tn, fp, fn, tp = metrics.confusion_matrix(y, called).ravel()
    assert (op["tn"], op["fp"], op["fn"], op["tp"]) == (tn, fp, fn, tp)
    assert op["sensitivity"]["value"] == pytest.approx(metrics.recall_score(y, called))
    assert op["specificity"]["value"] == pytest.approx(metrics.recall_score(y, called, pos_label=0))
    assert op["ppv"]["value"] == pytest.approx(metrics.precision_score(y, called))
    assert op["npv"]["value"] == pytest.approx(metrics.precision_score(y, called, pos_label=0))
    assert op["accuracy"]["value"] == pytest.approx(metrics.accuracy_score(y, called))
    assert op["f1"]["value"] == pytest.approx(metrics.f1_score(y, called))
    ci = stats.binomtest(int(tp), int(tp + fn)).proportion_ci(method="wilson")
    assert op["sensitivity"]["ci"] == pytest.approx([ci.low, ci.high])
    lo, hi = op["f1"]["ci"]
    assert lo < op["f1"]["value"] < hi and hi - lo < 0.25
    nobody = operating_point(y, p, 1.0 + 1e-9, n_boot=0, rng=np.random.default_rng(0))
    assert nobody["ppv"]["value"] is None and "called positive" in nobody["ppv"]["reason"]


# ---------------------------------------------------------------- calibration


def test_calibration_matches_sklearn_and_scipy():
    rng = np.random.default_rng(6)
    p = np.clip(expit(rng.normal(-0.5, 1.3, 800)), 0, 1)
    y = (rng.random(800) < expit(0.3 + 0.7 * logit(p))).astype(float)  # miscalibrated on purpose
    fit = recalibration(y, p)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit(p)[:, None], y)
    assert fit["slope"] == pytest.approx(ref.coef_[0, 0], abs=1e-5)
    assert fit["recalibration_intercept"] == pytest.approx(ref.intercept_[0], abs=1e-5)
    nll = lambda c: -np.sum(y * (c + logit(p)) - np.logaddexp(0, c + logit(p)))  # noqa: E731
    assert fit["intercept"] == pytest.approx(optimize.minimize_scalar(nll).x, abs=1e-5)
    # Wald intervals: 1.96 standard errors from the curvature of the log-likelihood, here by
    # central differences (independent of the Newton solver's Fisher information)
    h = 1e-4
    curvature = (nll(fit["intercept"] + h) - 2 * nll(fit["intercept"]) + nll(fit["intercept"] - h)) / h**2
    lo, hi = fit["intercept_ci"]
    assert (hi - lo) / 2 == pytest.approx(1.959964 / np.sqrt(curvature), rel=1e-4)
    nll2 = lambda a, b: -np.sum(y * (a + b * logit(p)) - np.logaddexp(0, a + b * logit(p)))  # noqa: E731
    a0, b0 = fit["recalibration_intercept"], fit["slope"]
    hess = np.array([[nll2(a0 + h, b0) - 2 * nll2(a0, b0) + nll2(a0 - h, b0),
                      (nll2(a0 + h, b0 + h) - nll2(a0 + h, b0 - h) - nll2(a0 - h, b0 + h) + nll2(a0 - h, b0 - h)) / 4],
                     [0.0, nll2(a0, b0 + h) - 2 * nll2(a0, b0) + nll2(a0, b0 - h)]]) / h**2
    hess[1, 0] = hess[0, 1]
    lo, hi = fit["slope_ci"]
    assert (hi - lo) / 2 == pytest.approx(1.959964 * np.sqrt(np.linalg.inv(hess)[1, 1]), rel=1e-3)
    bins = reliability_bins(y, p, n_bins=10)
    obs, pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b["observed"] for b in bins], obs)
    np.testing.assert_allclose([b["mean_predicted"] for b in bins], pred)
    assert sum(b["n"] for b in bins) == 800


def test_calibration_undefined_cases_give_reasons():
    sep = recalibration(np.array([0, 0, 1, 1.0]), np.array([0.1, 0.2, 0.7, 0.9]))
    assert sep["slope"] is None and "separate" in sep["reason"] and sep["intercept"] is not None
    one = recalibration(np.ones(5), np.linspace(0.2, 0.8, 5))
    assert one["slope"] is None and one["intercept"] is None and "one class" in one["reason"]


# ---------------------------------------------------------------- subgroups


def test_age_bands_and_subgroup_masks():
    assert age_band_labels([60, 70, 80]) == ["<60", "60-69", "70-79", ">=80"]
    assert age_band_labels([65.5]) == ["<65.5", ">=65.5"]
    cases = pd.DataFrame({"sex": ["F", "M", "", "F"], "age": [59.9, 60.0, np.nan, 80.0], "domain": ["xray"] * 4})
    groups = {(g.variable, g.group): g.mask.tolist() for g in define_subgroups(cases)}
    assert groups[("age", "<60")] == [True, False, False, False]
    assert groups[("age", "60-69")] == [False, True, False, False]
    assert groups[("age", "70-79")] == [False] * 4  # listed even when empty
    assert groups[("age", ">=80")] == [False, False, False, True]
    assert groups[("age", "unknown")] == [False, False, True, False]
    assert groups[("sex", "unknown")] == [False, False, True, False]
    assert not any(v == "domain" for v, _ in groups)
    mixed = define_subgroups(cases.assign(domain=["xray", "vfa", "vfa", "xray"]), age_bands=[65])
    assert [(g.variable, g.group) for g in mixed if g.variable != "sex"] == [
        ("age", "<65"), ("age", ">=65"), ("age", "unknown"), ("domain", "vfa"), ("domain", "xray")]


def test_subgroup_edge_cases_in_report(tmp_path):
    df = cohort(300, seed=8)
    test_rows = df["split"] == "test"
    df.loc[test_rows & (df["sex"] == "M"), "pvf"] = "0"  # men in test: no positive pvf
    df.loc[test_rows & (df["age"] >= 80), "age"] = 79.0  # nobody >= 80 in test
    report = build_report(df, tmp_path, tasks=["pvf"], bootstrap=50)
    groups = {(g["variable"], g["group"]): g for g in report["models"]["model"]["tasks"]["pvf"]["subgroups"]}
    men = groups[("sex", "male")]
    assert men["auroc"]["value"] is None and "only one class" in men["auroc"]["reason"]
    assert men["calibration"]["slope"] is None
    assert men["operating_points"]["youden"]["sensitivity"]["value"] is None
    assert men["operating_points"]["youden"]["specificity"]["value"] is not None
    assert groups[("age", ">=80")]["n"] == 0 and groups[("age", ">=80")]["notes"] == ["no cases"]
    small = groups[("age", "unknown")]
    assert small["n"] <= 1 and small["notes"]
    women = groups[("sex", "female")]
    sub = df[test_rows & (df["sex"] == "F") & (df["pvf"] != "")]
    assert women["auroc"]["value"] == pytest.approx(metrics.roc_auc_score(sub["pvf"].astype(int), sub["pvf_prob"]))
    html = (tmp_path / "report.html").read_text()
    assert "only one class" in html and "no cases" in html


# ---------------------------------------------------------------- the report


def test_report_numbers_match_sklearn(tmp_path):
    df = cohort(600, seed=9, splits=("train", "val", "test"))
    report = build_report(df, tmp_path, bootstrap=200, seed=1)
    val, test = df[df["split"] == "val"], df[df["split"] == "test"]
    for task in ("pvf", "osteo"):
        r = report["models"]["model"]["tasks"][task]
        t = test[test[task] != ""]
        y, p = t[task].astype(int).to_numpy(), t[f"{task}_prob"].to_numpy()
        o = r["overall"]
        assert o["n"] == len(t) and o["positives"] == y.sum()
        assert o["auroc"]["value"] == pytest.approx(metrics.roc_auc_score(y, p))
        lo, hi = o["auroc"]["delong"]["ci"]
        assert lo < o["auroc"]["value"] < hi
        assert o["calibration"]["brier"] == pytest.approx(metrics.brier_score_loss(y, p))
        np.testing.assert_allclose(o["roc"]["fpr"], metrics.roc_curve(y, p, drop_intermediate=False)[0])
        # thresholds come from the validation split only
        v = val[val[task] != ""]
        expect = choose_thresholds(v[task].astype(int).to_numpy() == 1, v[f"{task}_prob"].to_numpy())
        for name, op in o["operating_points"].items():
            assert r["thresholds"][name]["threshold"] == expect[name]["threshold"] == op["threshold"]
            called = p >= op["threshold"]
            assert [op["tn"], op["fp"], op["fn"], op["tp"]] == metrics.confusion_matrix(y, called).ravel().tolist()
            assert op["f1"]["value"] == pytest.approx(metrics.f1_score(y, called))
    assert report["models"]["model"]["tasks"]["pvf"]["unlabelled_excluded"] == int(df.loc[11, "split"] == "test")
    saved = json.loads((tmp_path / "thresholds.json").read_text())
    assert saved == {t: {n: v["threshold"] for n, v in report["models"]["model"]["tasks"][t]["thresholds"].items()}
                     for t in ("pvf", "osteo")}
    assert json.loads((tmp_path / "report.json").read_text()) == report
    used = pd.read_csv(tmp_path / "scores.csv", dtype=str, keep_default_na=False)
    assert sorted(used["split"].unique()) == ["test", "val"] and len(used) == (df["split"] != "train").sum()
    # test probabilities do not move the thresholds
    df2 = df.copy()
    df2.loc[df2["split"] == "test", "pvf_prob"] = np.round(np.linspace(0, 1, (df2["split"] == "test").sum()), 3)
    again = build_report(df2, tmp_path / "again", tasks=["pvf"], bootstrap=0)
    assert again["models"]["model"]["tasks"]["pvf"]["thresholds"] == report["models"]["model"]["tasks"]["pvf"][
        "thresholds"]


def test_missing_threshold_split_needs_a_flag(tmp_path):
    df = cohort(200, seed=10, splits=("test",))
    with pytest.raises(ScoresError, match=r"no rows with split 'val'.*--thresholds-on-eval"):
        build_report(df, tmp_path, bootstrap=0)
    with pytest.raises(ScoresError, match="overlaps"):
        build_report(df, tmp_path, eval_split="all", threshold_split="test", bootstrap=0)
    report = build_report(df, tmp_path, bootstrap=0, thresholds_on_eval=True)
    assert report["settings"]["thresholds"] == "evaluated cases"
    assert any("optimistic" in n for n in report["notes"])
    assert "optimistic" in (tmp_path / "report.html").read_text()
    t = df[df["pvf"] != ""]
    expect = choose_thresholds(t["pvf"].astype(int).to_numpy() == 1, t["pvf_prob"].to_numpy())
    assert report["models"]["model"]["tasks"]["pvf"]["thresholds"]["youden"]["threshold"] == \
        expect["youden"]["threshold"]


def test_fixed_thresholds_from_a_file(tmp_path):
    df = cohort(200, seed=11, splits=("test",))
    path = tmp_path / "thr.json"
    path.write_text(json.dumps({"pvf": {"youden": 0.4, "sensitivity_90": 0.2, "specificity_90": None}}))
    report = build_report(df, tmp_path / "out", thresholds=path, tasks=["pvf", "osteo"], bootstrap=0)
    pvf = report["models"]["model"]["tasks"]["pvf"]["overall"]["operating_points"]
    assert pvf["youden"]["threshold"] == 0.4 and pvf["specificity_90"]["threshold"] is None
    osteo = report["models"]["model"]["tasks"]["osteo"]["overall"]["operating_points"]
    assert all(v["threshold"] is None and "not in the thresholds" in v["reason"] for v in osteo.values())
    path.write_text(json.dumps({"pvf": {"youden": 1.5}}))
    with pytest.raises(ValueError, match=r"pvf\.youden"):
        build_report(df, tmp_path / "out", thresholds=path, bootstrap=0)
    with pytest.raises(ValueError, match="one model"):
        build_report(df, tmp_path / "out", thresholds={"pvf": {"youden": 0.4}}, compare=df, bootstrap=0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.drop(columns=["image_id"]), "missing column 'image_id'"),
    (lambda d: d.drop(columns=["osteo_prob"]), "task 'osteo': missing column 'osteo_prob'"),
    (lambda d: d.assign(pvf_prob=d["pvf_prob"].where(d.index != 4, np.nan)),
     r"'pvf_prob': missing \(NaN/blank\) probability at line\(s\) 6 \(img0004\)"),
    (lambda d: d.assign(osteo_prob=d["osteo_prob"].where(d.index != 2, 1.2)),
     r"'osteo_prob': probability outside \[0, 1\] at line\(s\) 4 \(img0002\)"),
    (lambda d: d.assign(pvf=d["pvf"].where(d.index != 3, "2")),
     r"'pvf': labels must be 0, 1 or blank; got \['2'\] at line\(s\) 5 \(img0003\)"),
    (lambda d: d.assign(image_id=d["image_id"].where(d.index != 9, "img0001")),
     r"'image_id': duplicated values \['img0001'\] at line\(s\) 3 \(img0001\), 11 \(img0001\)"),
    (lambda d: d.assign(sex=d["sex"].where(d.index != 0, "X")), "'sex': expected F/M or blank"),
])
def test_bad_input_is_named(tmp_path, edit, message):
    path = write(edit(cohort(40, seed=12)), tmp_path / "bad.csv")
    with pytest.raises(ScoresError, match=message) as err:
        build_report(read_scores(path), tmp_path / "out", tasks=["pvf", "osteo"], bootstrap=0)
    assert "bad.csv" in str(err.value)


def test_rows_of_a_dataframe_are_named_by_index(tmp_path):
    df = cohort(40, seed=12).set_index(np.arange(100, 140))
    df.loc[104, "pvf_prob"] = np.nan
    with pytest.raises(ScoresError, match=r"row\(s\) 104 \(img0004\)"):
        build_report(df, tmp_path, bootstrap=0)


def test_comparison_cases_must_match(tmp_path):
    a = cohort(120, seed=13)
    b = a.sample(frac=1.0, random_state=0)  # same cases, other order: fine
    build_report(a, tmp_path / "ok", compare=b, tasks=["pvf"], bootstrap=0)
    test_id = a.loc[a["split"] == "test", "image_id"].iloc[0]
    missing = b[b["image_id"] != test_id]
    with pytest.raises(ScoresError, match=rf"1 case\(s\) of .* are not among .*{test_id}"):
        build_report(a, tmp_path / "x", compare=missing, tasks=["pvf"], bootstrap=0)
    relabelled = b.copy()
    relabelled.loc[relabelled["image_id"] == test_id, "pvf"] = "1" if a.loc[
        a["image_id"] == test_id, "pvf"].item() == "0" else "0"
    with pytest.raises(ScoresError, match=rf"column 'pvf': values differ .* \({test_id}\)"):
        build_report(a, tmp_path / "x", compare=relabelled, tasks=["pvf"], bootstrap=0)
    with pytest.raises(ValueError, match="cannot tell its task"):
        build_report(a, tmp_path / "x", compare_columns=[("prob_a", "prob_b")], bootstrap=0)


def test_html_page_helpers():
    html = page("A <b> & C", "<p>body</p>", "p{margin:0}")
    assert html.startswith('<!DOCTYPE html><html><head><meta charset="utf-8"><title>A &lt;b&gt; &amp; C</title>')
    assert "<style>p{margin:0}</style></head><body><p>body</p></body></html>" in html
    assert table(["a", "b"], [["1", "<i>2</i>"]], ("l",)) == (
        '<table><tr><th class="l">a</th><th>b</th></tr><tr><td class="l">1</td><td><i>2</i></td></tr></table>')
    img = png_image(b"\x89PNG", 'x "y"')
    assert img == '<img alt="x &quot;y&quot;" src="data:image/png;base64,iVBORw==">'


# ---------------------------------------------------------------- command line


def test_cli_end_to_end(tmp_path, capsys):
    scores = write(cohort(500, seed=14), tmp_path / "scores.csv")
    out = tmp_path / "report"
    assert main(["--scores", scores, "--out", str(out), "--bootstrap", "200", "--title", "Demo"]) == 0
    printed = capsys.readouterr().out
    assert "model pvf: n=" in printed and "AUROC" in printed and "report.html" in printed
    for name in ("report.html", "report.json", "scores.csv", "thresholds.json", "roc_pvf.png",
                 "reliability_osteo.png", "confusion_pvf.png", "forest_osteo.png"):
        assert (out / name).stat().st_size > 0, name
    html = (out / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 8  # self-contained: no other source
    assert 'src="http' not in html and "<link" not in html and "<script" not in html
    assert "<h1>Demo</h1>" in html and "Wilson" in html
    report = json.loads((out / "report.json").read_text())
    df = pd.read_csv(scores, dtype=str, keep_default_na=False)
    t = df[(df["split"] == "test") & (df["osteo"] != "")]
    assert report["models"]["model"]["tasks"]["osteo"]["overall"]["auroc"]["value"] == pytest.approx(
        metrics.roc_auc_score(t["osteo"].astype(int), t["osteo_prob"].astype(float)))
    assert user_errors(main)(["--scores", str(tmp_path / "nope.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: 1 problem(s) in" in err and "nope.csv" in err and "file not found" in err


def test_cli_compare_two_files(tmp_path, capsys):
    a = cohort(400, seed=15)
    b = a.copy()
    rng = np.random.default_rng(0)
    for task in ("pvf", "osteo"):
        b[f"{task}_prob"] = np.round(expit(logit(np.clip(a[f"{task}_prob"], 1e-3, 1 - 1e-3))
                                           + rng.normal(0, 1.5, len(a))), 3)
    b = b.sample(frac=1.0, random_state=1)
    pa, pb = write(a, tmp_path / "a.csv"), write(b, tmp_path / "b.csv")
    out = tmp_path / "cmp"
    assert main(["--scores", pa, "--compare", pb, "--out", str(out), "--label", "full", "--label", "noisy",
                 "--bootstrap", "300"]) == 0
    assert "pvf full - noisy: AUROC difference" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["full", "noisy"]
    t = a[(a["split"] == "test") & (a["pvf"] != "")].merge(b[["image_id", "pvf_prob"]], on="image_id",
                                                            suffixes=("", "_b"))
    y = t["pvf"].astype(int).to_numpy()
    ref_aucs, ref_cov = _direct_delong(y, [t["pvf_prob"].to_numpy(), t["pvf_prob_b"].to_numpy()])
    c = report["comparison"]["pvf"]["overall"]
    assert c["delong"]["diff"] == pytest.approx(ref_aucs[0] - ref_aucs[1])
    assert c["delong"]["se"] == pytest.approx(np.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1]))
    assert c["bootstrap"]["ci"][0] < c["delong"]["diff"] < c["bootstrap"]["ci"][1]
    assert report["comparison"]["pvf"]["subgroups"][0]["group"] == "female"
    assert report["models"]["noisy"]["tasks"]["pvf"]["overall"]["auroc"]["value"] == pytest.approx(ref_aucs[1])
    assert (out / "scores_compare.csv").exists()


def test_cli_compare_columns(tmp_path, capsys):
    df = cohort(300, seed=16)
    df["pvf_prob_imageonly"] = np.round(np.clip(df["pvf_prob"] + np.random.default_rng(1).normal(0, 0.2, 300),
                                                0, 1), 3)
    out = tmp_path / "cols"
    assert main(["--scores", write(df, tmp_path / "s.csv"), "--out", str(out), "--compare-columns",
                 "pvf_prob,pvf_prob_imageonly", "--bootstrap", "100"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["pvf_prob", "pvf_prob_imageonly"] and list(report["comparison"]) == ["pvf"]
    t = df[(df["split"] == "test") & (df["pvf"] != "")]
    single = report["models"]["pvf_prob_imageonly"]["tasks"]["pvf"]["overall"]["auroc"]["value"]
    assert single == pytest.approx(metrics.roc_auc_score(t["pvf"].astype(int), t["pvf_prob_imageonly"]))
    df.loc[3, "pvf_prob_imageonly"] = np.nan
    assert user_errors(main)(["--scores", write(df, tmp_path / "s.csv"), "--out", str(out),
                              "--compare-columns", "pvf_prob,pvf_prob_imageonly"]) == 2
    err = capsys.readouterr().err
    assert "'pvf_prob_imageonly': missing (NaN/blank) probability at line(s) 5 (img0003)" in err


def test_no_jax_import():
    code = "import sys, vertex_jax.evaluate.__main__; assert 'jax' not in sys.modules, 'jax imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

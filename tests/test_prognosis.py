"""Incident-fracture prognosis: statistics against lifelines / scikit-survival / hand-worked
examples, input checks, and the command on a synthetic cohort with a known hazard."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from sklearn.metrics import roc_auc_score

from vertex_jax.synthetic.cohort import simulate_patients
from vertex_jax.prognosis import cox
from vertex_jax.prognosis.analysis import Settings, analyse
from vertex_jax.prognosis.data import (CohortDataError, baseline_scores, build_cohort, load_cohort,
                                       load_followup)
from vertex_jax.prognosis.discrimination import cumulative_dynamic_auc, harrell_c
from vertex_jax.prognosis.horizon import horizon_outcome, kaplan_meier, step_value
from vertex_jax.prognosis.km import km_by_group
from vertex_jax.prognosis.reclassification import (categorical_nri, continuous_nri, idi, net_benefit,
                                                   reclassification_counts)
from vertex_jax.prognosis.thresholds import parse_overrides, resolve_thresholds


def _survival_data(n=300, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    event_time = rng.exponential(1.0 / np.exp(0.7 * x)) * 5
    censor = rng.uniform(0.5, 12.0, n)
    time = np.minimum(event_time, censor)
    if ties:
        time = np.ceil(time * 2) / 2  # half-year grid: many tied times
    return time, (event_time <= censor).astype(int), x


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _synthetic(n, seed, informative=True):
    """Scores and follow-up tables from the synthetic cohort; DL scores are noisy functions of truth."""
    patients = simulate_patients(n, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    pvf = np.array([p.pvf for p in patients], float)
    t_score = np.array([p.t_score for p in patients])
    if not informative:
        pvf, t_score = rng.permutation(pvf), rng.permutation(t_score)
    scores = pd.DataFrame({
        "image_id": [f"{p.patient_id}_0" for p in patients],
        "patient_id": [p.patient_id for p in patients], "exam": 0,
        "age": [p.recorded_age for p in patients], "sex": [p.recorded_sex for p in patients],
        "bmi": [p.recorded_bmi for p in patients],
        "pvf_prob": _sigmoid(-1.5 + 3.0 * pvf + rng.normal(0, 1, n)),
        "osteo_prob": _sigmoid(-1.5 * (t_score + 2.5) + rng.normal(0, 1, n))})
    followup = pd.DataFrame({"patient_id": [p.patient_id for p in patients],
                             "followup_years": [round(p.followup_years, 4) for p in patients],
                             "incident_fracture": [int(p.incident_fracture) for p in patients]})
    return scores, followup


# ---------------------------------------------------------------- discrimination

def _brute_force_harrell(time, event, risk):
    """Pairs (i, j) usable when i has the event and T_i < T_j, or T_i == T_j with j censored."""
    good = ties = pairs = 0
    for i in range(len(time)):
        if not event[i]:
            continue
        for j in range(len(time)):
            if time[i] < time[j] or (time[i] == time[j] and not event[j]):
                pairs += 1
                good += risk[i] > risk[j]
                ties += risk[i] == risk[j]
    return (good + 0.5 * ties) / pairs


def test_harrell_c_against_brute_force_and_lifelines():
    time, event, x = _survival_data(150, seed=1, ties=True)
    risk = np.round(x, 1)  # tied risks too
    assert harrell_c(time, event, risk) == pytest.approx(_brute_force_harrell(time, event, risk), abs=1e-12)
    frame = pd.DataFrame({"x": x, "followup_years": time, "incident_fracture": event})
    model = cox.fit_cox(frame, ["x"], "m")
    assert harrell_c(time, event, model.log_hazard(frame)) == pytest.approx(
        model.fitter.concordance_index_, abs=1e-12)
    assert math.isnan(harrell_c(time, np.zeros_like(event), risk))


def test_auc_against_scikit_survival():
    sksurv_metrics = pytest.importorskip("sksurv.metrics")
    from sksurv.util import Surv
    time, event, x = _survival_data(400, seed=2)
    risk = x + np.random.default_rng(3).normal(0, 1, len(x))
    y = Surv.from_arrays(event.astype(bool), time)
    for tau in (1.0, 3.0, 5.0):
        expected, _ = sksurv_metrics.cumulative_dynamic_auc(y, y, risk, [tau])
        got = cumulative_dynamic_auc(horizon_outcome(time, event, tau), risk)
        assert got == pytest.approx(expected[0], abs=1e-10)


@pytest.mark.parametrize("ties", [False, True])
def test_ipcw_weights_against_scikit_survival_and_km(ties):
    nonparametric = pytest.importorskip("sksurv.nonparametric")
    from sksurv.util import Surv
    time, event, _ = _survival_data(300, seed=4, ties=ties)
    tau = 4.2
    outcome = horizon_outcome(time, event, tau)
    y = Surv.from_arrays(event.astype(bool), time)
    censoring = nonparametric.CensoringDistributionEstimator().fit(y)
    # Same censoring curve as scikit-survival (events leave the risk set before tied censorings).
    np.testing.assert_allclose(outcome.control_weight[outcome.control],
                               1 / censoring.predict_proba(np.array([tau]))[0])
    # Cases use the left limit G(T-); scikit-survival's weights use G(T), the same value unless
    # a censoring shares the event time.
    np.testing.assert_allclose(outcome.case_weight[outcome.case],
                               1 / censoring.predict_proba(time[outcome.case] - 1e-9), rtol=1e-12)
    if not ties:
        ipcw = censoring.predict_ipcw(y)
        np.testing.assert_allclose(outcome.case_weight[outcome.case], ipcw[outcome.case], rtol=1e-12)
    # The IPCW share of cases equals the Kaplan-Meier cumulative incidence by tau, ties included.
    km = KaplanMeierFitter().fit(time, event)
    assert outcome.event_rate == pytest.approx(1 - km.survival_function_at_times(tau).iloc[0], abs=1e-12)


def test_auc_without_censoring_is_mann_whitney():
    time = np.array([1.0, 2.0, 3.0, 6.0, 7.0, 8.0, 9.0])
    event = np.array([1, 1, 1, 0, 1, 0, 0])
    risk = np.array([0.9, 0.4, 0.6, 0.5, 0.1, 0.6, 0.2])
    cases = (time <= 5).astype(int)  # nobody censored before 5: plain ROC AUC
    got = cumulative_dynamic_auc(horizon_outcome(time, event, 5.0), risk)
    assert got == pytest.approx(roc_auc_score(cases, risk))


# ---------------------------------------------------------------- Kaplan-Meier and Cox

def test_kaplan_meier_hand_worked_and_lifelines():
    time = np.array([1, 2, 2, 3, 4, 5], float)
    event = np.array([1, 1, 0, 1, 0, 1])
    # n=6, d=1 at 1 -> 5/6; n=5, d=1 at 2 -> 5/6*4/5 = 4/6; n=3, d=1 at 3 -> 4/6*2/3 = 8/18;
    # censored at 4; n=1, d=1 at 5 -> 0
    curve = kaplan_meier(time, event)
    np.testing.assert_allclose(step_value(curve, np.array([0.5, 1, 2.5, 3.5, 4.5, 5])),
                               [1, 5 / 6, 4 / 6, 8 / 18, 8 / 18, 0])
    assert step_value(curve, 2.0, left=True) == pytest.approx(5 / 6)
    # Censoring curve: the fracture at 2 leaves first, so 4 are at risk of the censoring at 2
    # -> 3/4 (5 at risk would give 4/5); at 4, 2 at risk -> 3/4 * 1/2.
    censoring = kaplan_meier(time, event, reverse=True)
    np.testing.assert_allclose(step_value(censoring, np.array([1.5, 2, 3.5, 4, 6])), [1, 3 / 4, 3 / 4, 3 / 8, 3 / 8])
    assert step_value(censoring, 2.0, left=True) == 1
    km = km_by_group(time, event, np.ones(6, bool), horizon=3.5)
    assert km["groups"]["positive"]["at_horizon"]["survival"] == pytest.approx(8 / 18)
    t2, e2, _ = _survival_data(200, seed=5, ties=True)
    mine = step_value(kaplan_meier(t2, e2), np.linspace(0, 12, 50))
    ref = KaplanMeierFitter().fit(t2, e2).survival_function_at_times(np.linspace(0, 12, 50)).to_numpy()
    np.testing.assert_allclose(mine, ref, atol=1e-12)


def _logrank_by_hand(time, event, group):
    """sum(O1 - E1)^2 / sum V over distinct event times (hypergeometric variance)."""
    o_minus_e = var = 0.0
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d, d1 = ((time == t) & (event == 1)).sum(), ((time == t) & (event == 1) & group).sum()
        o_minus_e += d1 - d * n1 / n
        var += n1 * (n - n1) * d * (n - d) / (n * n * (n - 1)) if n > 1 else 0.0
    return o_minus_e ** 2 / var


def test_km_groups_and_logrank():
    time, event, x = _survival_data(250, seed=6, ties=True)
    group = x > 0.3
    km = km_by_group(time, event, group, horizon=4.0)
    assert km["logrank"]["statistic"] == pytest.approx(_logrank_by_hand(time, event, group), rel=1e-9)
    for name, mask in (("positive", group), ("negative", ~group)):
        entry = km["groups"][name]
        ref = KaplanMeierFitter().fit(time[mask], event[mask])
        assert entry["n"] == mask.sum() and entry["events"] == event[mask].sum()
        assert entry["at_horizon"]["survival"] == pytest.approx(ref.survival_function_at_times(4.0).iloc[0])
        at = entry["at_horizon"]
        assert at["survival_low"] < at["survival"] < at["survival_high"]
        assert entry["at_risk"][0] == mask.sum()
    groups = km["groups"]
    assert groups["positive"]["at_horizon"]["incidence"] > groups["negative"]["at_horizon"]["incidence"]


def test_hazard_ratios_match_direct_lifelines_fits(tmp_path):
    scores, followup = _synthetic(400, seed=7)
    cohort = build_cohort(scores, followup, score_columns=["pvf_prob", "osteo_prob"],
                          covariates=["age", "sex", "bmi"])
    thresholds, _ = resolve_thresholds(cohort.scores, overrides={"pvf_prob": 0.5, "osteo_prob": 0.4})
    frame, sds = cox.with_score_codings(cohort, thresholds)
    table = cox.hazard_ratios(cohort, frame, thresholds, sds)
    rows = {(r["score"], r["coding"], r["adjustment"]): r for r in table}
    f = cohort.frame.copy()
    assert cohort.covariates == ("age", "sex=M", "bmi")
    f["sex=M"] = f["sex=M"]  # already 0/1
    for score in cohort.scores:
        sd = f[score].std(ddof=1)
        for adjustment, others in (("crude", []), ("adjusted", ["age", "sex=M", "bmi"])):
            # Per SD: the raw-score coefficient times the SD.
            raw = CoxPHFitter().fit(f[[score, *others, "followup_years", "incident_fracture"]],
                                    "followup_years", "incident_fracture")
            b, se = raw.params_[score], raw.standard_errors_[score]
            row = rows[(score, "per SD", adjustment)]
            assert row["hr"] == pytest.approx(math.exp(b * sd), rel=1e-5)
            assert row["ci_low"] == pytest.approx(math.exp((b - 1.959964 * se) * sd), rel=1e-4)
            assert row["p"] == pytest.approx(raw.summary.at[score, "p"], rel=1e-4, abs=1e-300)
            # Binary: the indicator's hazard ratio.
            g = f.assign(pos=(f[score] >= thresholds[score].value).astype(float))
            binary = CoxPHFitter().fit(g[["pos", *others, "followup_years", "incident_fracture"]],
                                       "followup_years", "incident_fracture")
            assert rows[(score, "binary", adjustment)]["hr"] == pytest.approx(
                binary.hazard_ratios_["pos"], rel=1e-5)
            assert 0 <= rows[(score, "binary", adjustment)]["ph_p"] <= 1


def test_risk_at_horizon_is_breslow():
    time, event, x = _survival_data(120, seed=10, ties=True)
    frame = pd.DataFrame({"x": x, "followup_years": time, "incident_fracture": event})
    model = cox.fit_cox(frame, ["x"], "m")
    lp = model.log_hazard(frame)
    for tau in (2.0, 3.7):  # an observed time and one between observed times
        # Breslow: H0(tau) = sum over event times t <= tau of d_t / sum_{T_j >= t} exp(lp_j).
        h0 = sum((event[time == t]).sum() / np.exp(lp[time >= t]).sum()
                 for t in np.unique(time[(event == 1) & (time <= tau)]))
        np.testing.assert_allclose(model.risk(frame, tau), 1 - np.exp(-h0 * np.exp(lp)), rtol=1e-10)
    reference = 1 - model.fitter.predict_survival_function(frame[["x"]], times=[2.0]).to_numpy()[0]
    np.testing.assert_allclose(model.risk(frame, 2.0), reference, rtol=1e-10)  # exact at observed times


# ---------------------------------------------------------------- reclassification (hand-worked)

# Ten patients, nobody censored before the 5-year horizon, so every weight is 1.
# Events e1..e4 (fracture at 1-4 y), non-events n1..n6 (followed 6-11 y). Risk cut-offs 10%, 20%.
HAND_TIME = np.array([1, 2, 3, 4, 6, 7, 8, 9, 10, 11], float)
HAND_EVENT = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
HAND_OLD = np.array([0.05, 0.15, 0.25, 0.12, 0.15, 0.25, 0.05, 0.08, 0.30, 0.18])
HAND_NEW = np.array([0.15, 0.25, 0.15, 0.18, 0.05, 0.12, 0.15, 0.06, 0.22, 0.19])


def test_nri_and_idi_hand_worked():
    outcome = horizon_outcome(HAND_TIME, HAND_EVENT, 5.0)
    np.testing.assert_array_equal(outcome.case_weight + outcome.control_weight, np.ones(10))
    # Categories <10%, 10-20%, >=20%. Events: e1 up, e2 up, e3 down, e4 same -> 2/4 - 1/4 = 1/4.
    # Non-events: n1 down, n2 down, n3 up, n4-n6 same -> 2/6 - 1/6 = 1/6. NRI = 1/4 + 1/6 = 5/12.
    nri = categorical_nri(outcome, HAND_OLD, HAND_NEW, [0.1, 0.2])
    assert nri["events"] == pytest.approx(1 / 4)
    assert nri["nonevents"] == pytest.approx(1 / 6)
    assert nri["nri"] == pytest.approx(5 / 12)
    # Continuous: events up e1, e2, e4, down e3 -> 3/4 - 1/4 = 1/2;
    # non-events down n1, n2, n4, n5, up n3, n6 -> 4/6 - 2/6 = 1/3. NRI = 5/6.
    cnri = continuous_nri(outcome, HAND_OLD, HAND_NEW)
    assert (cnri["events"], cnri["nonevents"], cnri["nri"]) == pytest.approx((1 / 2, 1 / 3, 5 / 6))
    # IDI: events (0.73 - 0.57)/4 = 0.04; non-events (0.79 - 1.01)/6 = -0.036667; IDI = 0.076667.
    result = idi(outcome, HAND_OLD, HAND_NEW)
    assert result["idi"] == pytest.approx(0.04 + 0.22 / 6)
    assert result["slope_new"] == pytest.approx(0.73 / 4 - 0.79 / 6)
    counts = reclassification_counts(outcome, HAND_OLD, HAND_NEW, [0.1, 0.2])
    assert counts["events"] == [[0, 1, 0], [0, 1, 1], [0, 1, 0]]
    assert counts["nonevents"] == [[1, 1, 0], [1, 1, 0], [0, 1, 1]]


def test_net_benefit_hand_worked():
    outcome = horizon_outcome(HAND_TIME, HAND_EVENT, 5.0)
    pt = np.array([0.1, 0.2])
    # pt 0.1: treated events e1-e4 (TP 4), non-events n2, n3, n5, n6 (FP 4): 4/10 - 4/10 * 0.1/0.9.
    # pt 0.2: TP e2, FP n5: 1/10 - 1/10 * 0.2/0.8 = 0.075. Treat all at 0.2: 4/10 - 6/10 * 0.25 = 0.25.
    np.testing.assert_allclose(net_benefit(outcome, HAND_NEW, pt), [0.4 - 0.4 / 9, 0.075])
    np.testing.assert_allclose(net_benefit(outcome, None, pt), [0.4 - 0.6 / 9, 0.25])


def test_horizon_weights_hand_worked():
    # A fracture at 1, B censored at 2, C fracture at 3, D followed to 6; horizon 5.
    # Censoring KM: at 2, 3 at risk, 1 censored -> G = 2/3. Weights: A 1/G(1-) = 1, C 1/G(3-) = 3/2,
    # D 1/G(5) = 3/2, B 0. Total 4 = n; event rate 2.5/4 = 0.625 = 1 - KM(5) = 1 - 3/4 * 1/2.
    time, event = np.array([1.0, 2.0, 3.0, 6.0]), np.array([1, 0, 1, 0])
    outcome = horizon_outcome(time, event, 5.0)
    np.testing.assert_allclose(outcome.case_weight, [1, 0, 1.5, 0])
    np.testing.assert_allclose(outcome.control_weight, [0, 0, 0, 1.5])
    assert outcome.event_rate == pytest.approx(0.625)
    risk = np.array([0.3, 0.9, 0.1, 0.2])
    # AUC: A beats D (weight 1), C loses to D (weight 1.5) -> 1 / 2.5 = 0.4.
    assert cumulative_dynamic_auc(outcome, risk) == pytest.approx(0.4)
    # Net benefit at 0.15: treat A, B, D -> TP 1, FP 1.5: (1 - 1.5 * 0.15/0.85) / 4; at 0.25 only A, B -> 1/4.
    np.testing.assert_allclose(net_benefit(outcome, risk, np.array([0.15, 0.25])),
                               [(1 - 1.5 * 0.15 / 0.85) / 4, 0.25])
    # A tie: A fracture at 2, B censored at 2, C followed to 6. A's fracture comes first, so the
    # censoring risk set at 2 is {B, C}: G(2) = 1/2, G(2-) = 1. Weights A 1, C 2: rate 1/3 = 1 - KM(5).
    tied = horizon_outcome(np.array([2.0, 2.0, 6.0]), np.array([1, 0, 0]), 5.0)
    np.testing.assert_allclose(tied.case_weight + tied.control_weight, [1, 0, 2])
    assert tied.event_rate == pytest.approx(1 / 3)


# ---------------------------------------------------------------- inputs

def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("body, expected", [
    ("P1,-1,0\nP2,3,1\n", ["followup_years", "must be > 0", "line(s) 2"]),
    ("P1,2,0\nP2,0,1\n", ["followup_years", "must be > 0", "line(s) 3"]),
    ("P1,nan,0\nP2,3,1\n", ["followup_years", "not a finite number", "line(s) 2"]),
    ("P1,2,0\nP2,,1\n", ["followup_years", "event without a follow-up time", "line(s) 3"]),
    ("P1,2,2\nP2,3,1\n", ["incident_fracture", "expected 0 or 1", "line(s) 2"]),
    ("P1,2,\nP2,3,1\n", ["incident_fracture", "blank", "line(s) 2"]),
    ("P1,2,0\nP1,3,1\n", ["patient_id", "duplicate", "P1", "line(s) 2, 3"]),
    ("P1,abc,0\nP2,3,1\n", ["followup_years", "not a finite number", "abc"]),
])
def test_followup_errors_name_file_line_and_field(tmp_path, body, expected):
    path = _write(tmp_path / "fu.csv", "patient_id,followup_years,incident_fracture\n" + body)
    with pytest.raises(CohortDataError) as info:
        load_followup(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message


def test_followup_missing_column_and_all_problems_at_once(tmp_path):
    with pytest.raises(CohortDataError, match=r"missing column\(s\) \['incident_fracture'\]"):
        load_followup(_write(tmp_path / "a.csv", "patient_id,followup_years\nP1,2\n"))
    with pytest.raises(CohortDataError) as info:
        load_followup(_write(tmp_path / "b.csv", "patient_id,followup_years,incident_fracture\n"
                                                  "P1,-2,0\nP1,3,7\n"))
    assert len(info.value.problems) == 3  # duplicate id, bad event, negative time


def test_baseline_is_lowest_exam(tmp_path):
    df = pd.DataFrame({"patient_id": ["A", "A", "B", "B", "C"], "exam": ["2", "0", "", "1", ""],
                       "pvf_prob": ["0.9", "0.1", "0.7", "0.3", "0.5"]})
    base = baseline_scores(df, ["pvf_prob"], "s.csv").set_index("patient_id")["pvf_prob"]
    assert base.to_dict() == {"A": 0.1, "B": 0.3, "C": 0.5}  # blank exam after numbered ones
    no_exam = baseline_scores(df.drop(columns="exam"), ["pvf_prob"], "s.csv")
    assert no_exam.set_index("patient_id")["pvf_prob"].to_dict() == {"A": 0.9, "B": 0.7, "C": 0.5}
    with pytest.raises(CohortDataError, match=r"'exam': not a whole number at line\(s\) 3"):
        baseline_scores(df.assign(exam=["0", "1.5", "", "", ""]), ["pvf_prob"], "s.csv")
    with pytest.raises(CohortDataError, match=r"'pvf_prob': probability outside \[0, 1\] at line\(s\) 4"):
        baseline_scores(df.assign(pvf_prob=["0.1", "0.2", "1.2", "0.3", "0.5"]), ["pvf_prob"], "s.csv")


def test_id_mismatches(tmp_path):
    scores, followup = _synthetic(60, seed=8)
    cols = dict(score_columns=["pvf_prob", "osteo_prob"], covariates=["age", "sex", "bmi"])
    extra = pd.concat([followup, followup.assign(patient_id=followup.patient_id + "x")])
    cohort = build_cohort(scores, extra, **cols)  # follow-up without scores: a warning
    assert any(n.startswith("warning: 60 patient(s)") for n in cohort.notes)
    with pytest.raises(CohortDataError, match=r"10 scored patient\(s\) have no follow-up.*allow-missing"):
        build_cohort(scores, followup.iloc[10:], **cols)
    cohort = build_cohort(scores, followup.iloc[10:], allow_missing_followup=True, **cols)
    assert cohort.counts["matched_patients"] == 50
    with pytest.raises(CohortDataError, match="no patient_id in common"):
        build_cohort(scores, followup.assign(patient_id=followup.patient_id.str[1:]), **cols)
    with pytest.raises(CohortDataError, match=r"covariate column\(s\) \['smoker'\] in neither file"):
        build_cohort(scores, followup, score_columns=["pvf_prob"], covariates=["age", "smoker"])
    typo = scores.assign(age=scores.age.astype(object).where(scores.index != 3, "seventy"))
    with pytest.raises(CohortDataError, match=r"'age' mixes numbers and text \(seventy, e.g. .* P000003\)"):
        build_cohort(typo, followup, **cols)


def test_thresholds(tmp_path):
    path = _write(tmp_path / "thresholds.json", json.dumps(
        {"pvf": {"youden": 0.4, "sensitivity_90": 0.2}, "osteo": {"youden": 0.6}}))
    got, notes = resolve_thresholds(["pvf_prob", "osteo_logit"], path=path)
    assert got["pvf_prob"].value == 0.4 and got["pvf_prob"].source == "thresholds.json: pvf.youden"
    assert got["osteo_logit"].value == pytest.approx(math.log(0.6 / 0.4)) and not notes
    got, _ = resolve_thresholds(["pvf_prob"], path=path, key="sensitivity_90")
    assert got["pvf_prob"].value == 0.2
    got, _ = resolve_thresholds(["pvf_prob"], path=path, overrides=parse_overrides(["pvf_prob=0.33"]))
    assert got["pvf_prob"].value == 0.33 and got["pvf_prob"].source == "--threshold"
    got, notes = resolve_thresholds(["pvf_prob"])
    assert got["pvf_prob"].value == 0.5 and "using probability 0.5" in notes[0]
    with pytest.raises(CohortDataError, match=r"no 'spec_95' cut-off under 'pvf'"):
        resolve_thresholds(["pvf_prob"], path=path, key="spec_95")
    with pytest.raises(CohortDataError, match="expected COLUMN=NUMBER"):
        parse_overrides(["pvf_prob:0.3"])
    with pytest.raises(CohortDataError, match=r"must be in \[0, 1\]"):
        resolve_thresholds(["pvf_prob"], overrides={"pvf_prob": 1.5})


# ---------------------------------------------------------------- the command

def test_cli_on_synthetic_cohort(tmp_path):
    scores, followup = _synthetic(1000, seed=0)
    # One-task models write one file each; a repeat exam (exam 1, noise) must not be the baseline.
    repeat = scores.iloc[:100].assign(exam=1, pvf_prob=0.5, osteo_prob=0.5)
    both = pd.concat([repeat, scores])
    both.drop(columns="osteo_prob").to_csv(tmp_path / "pvf.csv", index=False)
    both.drop(columns=["pvf_prob", "age", "sex", "bmi"]).to_csv(tmp_path / "osteo.csv", index=False)
    extra = followup.iloc[:5].assign(patient_id=lambda d: d.patient_id + "-unscored")
    pd.concat([followup, extra]).to_csv(tmp_path / "followup.csv", index=False)
    (tmp_path / "thresholds.json").write_text(json.dumps({"pvf": {"youden": 0.5}, "osteo": {"youden": 0.45}}))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "vertex_jax.prognosis", "--scores", str(tmp_path / "pvf.csv"),
         "--scores", str(tmp_path / "osteo.csv"), "--followup", str(tmp_path / "followup.csv"),
         "--out", str(out), "--thresholds", str(tmp_path / "thresholds.json"),
         "--bootstrap", "200", "--horizon", "5", "--risk-thresholds", "0.1,0.2"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "clinical + DL" in proc.stdout and "difference" in proc.stdout
    for name in ("prognosis.html", "prognosis.json", "decision_curve.png", "hazard_ratios.png",
                 "km_pvf_prob.png", "km_osteo_prob.png"):
        assert (out / name).stat().st_size > 1000, name
    page = (out / "prognosis.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="km_' not in page

    def no_nan(token):
        raise AssertionError(f"non-JSON number {token}")
    result = json.loads((out / "prognosis.json").read_text(), parse_constant=no_nan)
    assert result["cohort"]["score_rows"] == 2 * 1100
    assert any("5 patient(s)" in n and "have no scores" in n for n in result["notes"])
    c = result["discrimination"]["c_index"]
    assert c["clinical + DL"]["estimate"] > c["clinical"]["estimate"]
    assert c["delta"]["ci_low"] > 0, c["delta"]  # adding the DL scores raises the C-index
    assert result["discrimination"]["auc_at_horizon"]["delta"]["ci_low"] > 0
    assert result["reclassification"]["idi"]["idi"]["ci_low"] > 0
    for row in result["hazard_ratios"]:  # higher fracture / osteoporosis scores -> higher hazard
        assert row["ci_low"] > 1, row
    assert result["settings"]["thresholds"]["osteo_prob"] == {
        "value": 0.45, "source": "thresholds.json: osteo.youden"}
    km = result["kaplan_meier"]["pvf_prob"]
    assert km["logrank"]["p"] < 1e-3
    groups = km["groups"]
    assert groups["positive"]["at_horizon"]["incidence"] > groups["negative"]["at_horizon"]["incidence"]
    dca = result["decision_curve"]
    i = dca["thresholds"].index(0.15)
    assert dca["clinical + DL"][i] > max(dca["clinical"][i], dca["treat all"][i], 0.0)


def test_uninformative_scores_add_nothing():
    scores, followup = _synthetic(700, seed=3, informative=False)
    cohort = build_cohort(scores, followup, score_columns=["pvf_prob", "osteo_prob"],
                          covariates=["age", "sex", "bmi"])
    thresholds, _ = resolve_thresholds(cohort.scores)
    result = analyse(cohort, thresholds, Settings(bootstrap=150, seed=1))
    delta = result["discrimination"]["c_index"]["delta"]
    assert delta["ci_low"] < 0 < delta["ci_high"]
    assert abs(delta["estimate"]) < 0.02
    for row in result["hazard_ratios"]:
        if row["adjustment"] == "adjusted":
            assert row["ci_low"] < 1 < row["ci_high"], row


def test_cli_errors_and_no_jax(tmp_path):
    bad = _write(tmp_path / "fu.csv", "patient_id,followup_years,incident_fracture\nP1,-3,0\n")
    scores = _write(tmp_path / "s.csv", "patient_id,pvf_prob,age,sex,bmi\nP1,0.3,70,F,24\n")
    code = ("import sys; from vertex_jax.cli import user_errors; from vertex_jax.prognosis.__main__ import main; "
            f"rc = user_errors(main)(['--scores', r'{scores}', '--followup', r'{bad}', '--out', r'{tmp_path / 'o'}']); "
            "import vertex_jax.prognosis.report, vertex_jax.prognosis.plots; "
            "assert not any(m == 'jax' or m.startswith('jax.') for m in sys.modules), 'jax imported'; "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(bad) in proc.stderr and "must be > 0" in proc.stderr and "line(s) 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_load_cohort_complete_case(tmp_path):
    scores, followup = _synthetic(200, seed=9)
    scores.loc[:4, "age"] = None
    scores.loc[5:6, "pvf_prob"] = None
    scores.to_csv(tmp_path / "s.csv", index=False)
    followup.to_csv(tmp_path / "f.csv", index=False)
    cohort = load_cohort([tmp_path / "s.csv"], tmp_path / "f.csv")
    missing = scores[["age", "sex", "bmi", "pvf_prob"]].isna().any(axis=1).sum()
    assert cohort.counts["analysed_patients"] == 200 - missing
    assert cohort.counts["missing_pvf_prob"] == 2
    assert any(n.startswith("complete-case analysis") for n in cohort.notes)
    assert not cohort.frame[list(cohort.covariates) + list(cohort.scores)].isna().any().any()


def test_cohort_says_whether_the_probabilities_are_calibrated(tmp_path):
    scores, followup = _synthetic(60, seed=3)
    followup.to_csv(tmp_path / "f.csv", index=False)
    for column, expected in [(None, "calibration of the scores unknown"),
                             ("none", "warning: the scores come from an uncalibrated model"),
                             ("temperature", "probabilities calibrated on the model's validation split "
                                             "(temperature)")]:
        table = scores if column is None else scores.assign(calibration=column)
        table.to_csv(tmp_path / "s.csv", index=False)
        notes = load_cohort([tmp_path / "s.csv"], tmp_path / "f.csv").notes
        assert any(n.startswith(expected) for n in notes), notes

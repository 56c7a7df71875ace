"""The whole prognosis analysis of one cohort, as one JSON-ready dictionary.

Two Cox models are compared: *clinical* (the covariates) and *clinical + DL* (the
covariates and every score per SD). C-index and AUC(horizon) use each model's linear
predictor; NRI, IDI and net benefit its predicted risk by the horizon. Predictions come
from the models fitted on the whole cohort (apparent performance); the bootstrap
resamples patients to give the sampling uncertainty of each figure and of each paired
difference, with the models held fixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.exceptions import ConvergenceError

from vertex_jax.prognosis import cox
from vertex_jax.prognosis.bootstrap import bootstrap, interval
from vertex_jax.prognosis.data import Cohort, CohortDataError
from vertex_jax.prognosis.discrimination import cumulative_dynamic_auc, harrell_c
from vertex_jax.prognosis.horizon import horizon_outcome
from vertex_jax.prognosis.km import km_by_group
from vertex_jax.prognosis.reclassification import (categorical_nri, continuous_nri, idi, net_benefit,
                                                   reclassification_counts)
from vertex_jax.prognosis.thresholds import Threshold

CLINICAL, FULL = "clinical", "clinical + DL"
MODELS = (CLINICAL, FULL)


@dataclasses.dataclass(frozen=True)
class Settings:
    horizon: float = 5.0
    risk_cutoffs: tuple[float, ...] = (0.1, 0.2)
    bootstrap: int = 1000
    seed: int = 0
    dca_thresholds: tuple[float, ...] = tuple(np.round(np.arange(0.01, 0.505, 0.01), 2))


def _cohort_summary(cohort: Cohort, horizon: float) -> dict:
    time, event = cohort.time, cohort.event
    outcome = horizon_outcome(time, event, horizon)
    followup = KaplanMeierFitter().fit(time, 1 - event)  # reverse KM: median potential follow-up
    incidence = KaplanMeierFitter().fit(time, event)
    ci = incidence.confidence_interval_survival_function_
    row = ci[ci.index <= horizon].iloc[-1]
    n_terms = len(cohort.covariates) + len(cohort.scores)
    return {**cohort.counts,
            "median_followup_reverse_km": float(followup.median_survival_time_),
            "max_followup": float(time.max()),
            "cases_by_horizon": int(outcome.case.sum()),
            "controls_beyond_horizon": int(outcome.control.sum()),
            "censored_before_horizon": int((~outcome.case & ~outcome.control).sum()),
            "cumulative_incidence_km": 1.0 - float(incidence.survival_function_at_times(horizon).iloc[0]),
            "cumulative_incidence_km_low": 1.0 - float(row.iloc[1]),
            "cumulative_incidence_km_high": 1.0 - float(row.iloc[0]),
            "cumulative_incidence_ipcw": outcome.event_rate,
            "events_per_term_full_model": cohort.counts["events"] / n_terms}


def analyse(cohort: Cohort, thresholds: Mapping[str, Threshold], settings: Settings = Settings()) -> dict:
    """Cox models, hazard ratios, discrimination, reclassification, decision curve and KM curves."""
    h = settings.horizon
    time, event = cohort.time, cohort.event
    outcome = horizon_outcome(time, event, h)
    if not outcome.control.any():
        raise CohortDataError("--horizon", [f"nobody is followed beyond {h:g} years (longest follow-up "
                                            f"{time.max():.3g}); choose a shorter horizon"])
    if not outcome.case.any():
        raise CohortDataError("--horizon", [f"no fracture within {h:g} years; choose a longer horizon"])
    frame, sds = cox.with_score_codings(cohort, thresholds)
    terms = {CLINICAL: list(cohort.covariates), FULL: [*cohort.covariates, *map(cox.per_sd, cohort.scores)]}
    try:
        models = {m: cox.fit_cox(frame, terms[m], m) for m in MODELS}
    except ConvergenceError as e:
        raise CohortDataError("Cox model", [f"did not converge: {str(e).splitlines()[0]}"]) from e
    lp = {m: models[m].log_hazard(frame) for m in MODELS}
    risk = {m: models[m].risk(frame, h) for m in MODELS}
    alone = {s: frame[s].to_numpy(np.float64) for s in cohort.scores}

    def statistics(idx: np.ndarray) -> dict[str, float]:
        t, e = time[idx], event[idx]
        outcome = horizon_outcome(t, e, h)
        out: dict[str, float] = {}
        for name, score in [*((m, lp[m]) for m in MODELS), *alone.items()]:
            out[f"c_index/{name}"] = harrell_c(t, e, score[idx])
            out[f"auc/{name}"] = cumulative_dynamic_auc(outcome, score[idx])
        for metric in ("c_index", "auc"):
            out[f"{metric}/delta"] = out[f"{metric}/{FULL}"] - out[f"{metric}/{CLINICAL}"]
        old, new = risk[CLINICAL][idx], risk[FULL][idx]
        out |= {f"nri/{k}": v for k, v in categorical_nri(outcome, old, new, settings.risk_cutoffs).items()}
        out |= {f"continuous_nri/{k}": v for k, v in continuous_nri(outcome, old, new).items()}
        out |= {f"idi/{k}": v for k, v in idi(outcome, old, new).items()}
        out["mean_risk/" + CLINICAL], out["mean_risk/" + FULL] = float(old.mean()), float(new.mean())
        return out

    everyone = np.arange(len(frame))
    point = statistics(everyone)
    samples = bootstrap(statistics, len(frame), settings.bootstrap, settings.seed)
    estimates = {k: interval(v, samples.get(k)) for k, v in point.items()}

    def section(prefix: str) -> dict:
        return {k.split("/", 1)[1]: v for k, v in estimates.items() if k.startswith(prefix + "/")}

    pt = np.asarray(settings.dca_thresholds)
    summary = _cohort_summary(cohort, h)
    notes = list(cohort.notes)
    if (epv := summary["events_per_term_full_model"]) < 10:
        notes.append(f"warning: {epv:.1f} events per term in the clinical + DL model (< 10): "
                     f"coefficients may be unstable")
    for m in MODELS:
        notes += [f"warning ({m} model): {w}" for w in models[m].warnings]
    return {
        "settings": {**dataclasses.asdict(settings), "scores": list(cohort.scores),
                     "covariates": list(cohort.covariates),
                     "thresholds": {s: dataclasses.asdict(t) for s, t in thresholds.items()},
                     "score_sd": sds},
        "cohort": summary,
        "notes": notes,
        "models": {m: models[m].describe(frame) for m in MODELS},
        "hazard_ratios": cox.hazard_ratios(cohort, frame, thresholds, sds),
        "discrimination": {"c_index": section("c_index"), "auc_at_horizon": section("auc")},
        "reclassification": {
            "risk_cutoffs": list(settings.risk_cutoffs),
            "categorical_nri": section("nri"), "continuous_nri": section("continuous_nri"),
            "idi": section("idi"), "mean_risk": section("mean_risk"),
            "counts": reclassification_counts(outcome, risk[CLINICAL], risk[FULL], settings.risk_cutoffs)},
        "decision_curve": {"thresholds": pt.tolist(),
                           **{m: net_benefit(outcome, risk[m], pt).tolist() for m in MODELS},
                           "treat all": net_benefit(outcome, None, pt).tolist(),
                           "treat none": np.zeros(len(pt)).tolist()},
        "kaplan_meier": {s: {"threshold": thresholds[s].value, "threshold_source": thresholds[s].source,
                             **km_by_group(time, event, frame[cox.positive(s)].to_numpy() > 0, h)}
                         for s in cohort.scores},
        "bootstrap": {"reps": settings.bootstrap, "seed": settings.seed,
                      "note": "percentile intervals; patients resampled, fitted models held fixed"},
    }

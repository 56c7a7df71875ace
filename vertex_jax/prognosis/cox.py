"""Cox proportional-hazards models (lifelines, Efron ties) and the hazard-ratio table.

Scores enter per standard deviation (``score / SD`` in the analysed cohort) or as
DL-positive (score >= cut-off) vs negative; each crude (alone) and adjusted (with the
clinical covariates). The proportional-hazards assumption is checked with lifelines'
scaled-Schoenfeld-residual test (rank transform of time).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from lifelines.exceptions import ConvergenceError
from lifelines.statistics import proportional_hazard_test

from vertex_jax.prognosis.data import EVENT, TIME, Cohort
from vertex_jax.prognosis.thresholds import Threshold


@dataclasses.dataclass(frozen=True)
class CoxModel:
    """A fitted model on named design columns and the warnings lifelines raised while fitting."""

    name: str
    columns: tuple[str, ...]
    fitter: CoxPHFitter
    warnings: tuple[str, ...]

    def log_hazard(self, frame: pd.DataFrame) -> np.ndarray:
        """Linear predictor (centred as lifelines does; ranks are what matter)."""
        return self.fitter.predict_log_partial_hazard(frame[list(self.columns)]).to_numpy(np.float64)

    def risk(self, frame: pd.DataFrame, horizon: float) -> np.ndarray:
        """Predicted probability of fracture by ``horizon``: 1 - exp(-H0(horizon) exp(lp)).

        H0 is lifelines' Breslow baseline, read as the step function it is (lifelines'
        own prediction interpolates linearly between observed times).
        """
        h0 = self.fitter.baseline_cumulative_hazard_.iloc[:, 0]
        before = h0[h0.index <= horizon]
        cumulative = float(before.iloc[-1]) if len(before) else 0.0
        return 1.0 - np.exp(-cumulative * np.exp(self.log_hazard(frame)))

    def coefficients(self) -> list[dict]:
        """Hazard ratio, 95% CI and Wald p per column."""
        s = self.fitter.summary
        return [{"term": c, "coef": s.at[c, "coef"], "se": s.at[c, "se(coef)"],
                 "hr": s.at[c, "exp(coef)"], "ci_low": s.at[c, "exp(coef) lower 95%"],
                 "ci_high": s.at[c, "exp(coef) upper 95%"], "p": s.at[c, "p"]} for c in self.columns]

    def ph_test(self, frame: pd.DataFrame) -> dict[str, dict[str, float]]:
        """Schoenfeld-residual test per column: chi-square statistic and p (small p = non-PH)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = proportional_hazard_test(self.fitter, _design(frame, self.columns),
                                              time_transform="rank")
        s = result.summary
        return {c: {"statistic": float(s.at[c, "test_statistic"]), "p": float(s.at[c, "p"])}
                for c in self.columns}

    def describe(self, frame: pd.DataFrame) -> dict:
        """Everything about the fit for the report."""
        return {"name": self.name, "terms": list(self.columns), "coefficients": self.coefficients(),
                "ph_test": self.ph_test(frame), "log_likelihood": float(self.fitter.log_likelihood_),
                "aic_partial": float(self.fitter.AIC_partial_),
                "concordance_lifelines": float(self.fitter.concordance_index_),
                "warnings": list(self.warnings)}


def _design(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    return frame[[*columns, TIME, EVENT]]


def fit_cox(frame: pd.DataFrame, columns: Sequence[str], name: str) -> CoxModel:
    """Fit a Cox model of follow-up on ``columns`` of ``frame`` (Efron ties, no penalty)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fitter = CoxPHFitter().fit(_design(frame, columns), duration_col=TIME, event_col=EVENT)
    messages = tuple(dict.fromkeys(str(w.message).strip().splitlines()[0] for w in caught))
    return CoxModel(name, tuple(columns), fitter, messages)


def per_sd(score: str) -> str:
    return f"{score} per SD"


def positive(score: str) -> str:
    return f"{score} positive"


def with_score_codings(cohort: Cohort, thresholds: Mapping[str, Threshold]
                       ) -> tuple[pd.DataFrame, dict[str, float]]:
    """The cohort frame plus ``<score> per SD`` and ``<score> positive`` columns, and each SD."""
    frame = cohort.frame.copy()
    sds = {}
    for score in cohort.scores:
        sds[score] = float(frame[score].std(ddof=1))
        frame[per_sd(score)] = frame[score] / sds[score]
        frame[positive(score)] = (frame[score] >= thresholds[score].value).astype("float64")
    return frame, sds


def _not_estimable(row: dict, reason: str) -> dict:
    return {**row, "hr": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "ph_p": np.nan,
            "warnings": [reason]}


def hazard_ratios(cohort: Cohort, frame: pd.DataFrame, thresholds: Mapping[str, Threshold],
                  sds: Mapping[str, float]) -> list[dict]:
    """One row per score x coding (per SD, binary) x adjustment (crude, adjusted)."""
    rows = []
    for score in cohort.scores:
        codings = (("per SD", per_sd(score), {"sd": sds[score]}),
                   ("binary", positive(score), {"threshold": thresholds[score].value,
                                                "threshold_source": thresholds[score].source,
                                                "n_positive": int(frame[positive(score)].sum())}))
        for coding, column, extra in codings:
            for adjustment, others in (("crude", ()), ("adjusted", cohort.covariates)):
                row = {"score": score, "coding": coding, "adjustment": adjustment, **extra,
                       "n": len(frame), "events": int(frame[EVENT].sum())}
                if coding == "binary" and row["n_positive"] in (0, len(frame)):
                    rows.append(_not_estimable(row, "every patient on one side of the cut-off"))
                    continue
                try:
                    model = fit_cox(frame, [column, *others], f"{score} {coding} {adjustment}")
                except ConvergenceError as e:
                    rows.append(_not_estimable(row, f"did not converge: {str(e).splitlines()[0]}"))
                    continue
                coef = model.coefficients()[0]
                rows.append({**row, **{k: coef[k] for k in ("hr", "ci_low", "ci_high", "p")},
                             "ph_p": model.ph_test(frame)[column]["p"], "warnings": list(model.warnings)})
    return rows

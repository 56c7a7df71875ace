"""Discrimination: Harrell's C-index and the cumulative/dynamic time-dependent AUC."""

from __future__ import annotations

import numpy as np
from lifelines.utils import concordance_index

from vertex_jax.evaluate.roc import weighted_auroc
from vertex_jax.prognosis.horizon import HorizonOutcome


def harrell_c(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C for a risk score (higher = earlier fracture); NaN without usable pairs.

    lifelines' conventions: pairs are usable when the shorter time is an event (an event
    and a censoring at the same time count, the censored one as longer); tied risks
    count 1/2.
    """
    try:
        return float(concordance_index(time, -np.asarray(risk), event))
    except ZeroDivisionError:
        return float("nan")


def cumulative_dynamic_auc(outcome: HorizonOutcome, risk: np.ndarray) -> float:
    """AUC(tau): P(risk_case > risk_control) for cases by tau vs controls beyond tau, IPCW.

    Cases carry their weights 1/G(T-); controls share one weight, which cancels. Tied
    risks count 1/2. NaN without cases or controls.
    """
    risk = np.asarray(risk, np.float64)
    return weighted_auroc(risk[outcome.case], risk[outcome.control], outcome.case_weight[outcome.case])

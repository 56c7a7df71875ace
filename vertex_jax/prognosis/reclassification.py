"""Reclassification and clinical utility at the horizon: NRI, IDI and net benefit.

All use the IPCW weights of :mod:`vertex_jax.prognosis.horizon` ("event by the horizon",
censored-before-horizon patients represented through the weights), so with complete
follow-up they are the usual binary-outcome formulas:

* NRI (events) = P(up | event) - P(down | event); NRI (non-events) = P(down | no event)
  - P(up | no event); NRI = their sum. *Categorical*: up/down = moving to a higher/lower
  risk category; *continuous*: any increase/decrease of predicted risk.
* IDI = [mean risk_new - mean risk_old] among events - the same among non-events
  (the change in discrimination slope).
* Net benefit at threshold probability pt = TP/N - FP/N * pt / (1 - pt), treating
  patients with predicted risk >= pt; treat-all uses everyone, treat-none is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vertex_jax.prognosis.horizon import HorizonOutcome


def categories(risk: np.ndarray, cutoffs: Sequence[float]) -> np.ndarray:
    """Risk category 0..len(cutoffs): below the first cut-off is 0, >= the last is the top."""
    return np.searchsorted(np.asarray(cutoffs, np.float64), risk, side="right")


def _share(mask: np.ndarray, weight: np.ndarray) -> float:
    total = weight.sum()
    return float(np.sum(weight * mask) / total) if total > 0 else float("nan")


def _nri(outcome: HorizonOutcome, up: np.ndarray, down: np.ndarray) -> dict[str, float]:
    cw, nw = outcome.case_weight, outcome.control_weight
    out = {"up_events": _share(up, cw), "down_events": _share(down, cw),
           "up_nonevents": _share(up, nw), "down_nonevents": _share(down, nw)}
    out["events"] = out["up_events"] - out["down_events"]
    out["nonevents"] = out["down_nonevents"] - out["up_nonevents"]
    out["nri"] = out["events"] + out["nonevents"]
    return out


def categorical_nri(outcome: HorizonOutcome, risk_old: np.ndarray, risk_new: np.ndarray,
                    cutoffs: Sequence[float]) -> dict[str, float]:
    """NRI over risk categories split at ``cutoffs`` (e.g. 0.1, 0.2)."""
    old, new = categories(risk_old, cutoffs), categories(risk_new, cutoffs)
    return _nri(outcome, new > old, new < old)


def continuous_nri(outcome: HorizonOutcome, risk_old: np.ndarray, risk_new: np.ndarray) -> dict[str, float]:
    """Category-free NRI: any increase counts as up, any decrease as down."""
    return _nri(outcome, risk_new > risk_old, risk_new < risk_old)


def idi(outcome: HorizonOutcome, risk_old: np.ndarray, risk_new: np.ndarray) -> dict[str, float]:
    """Integrated discrimination improvement and both discrimination slopes."""
    cw, nw = outcome.case_weight, outcome.control_weight
    slope_old = _share(risk_old, cw) - _share(risk_old, nw)
    slope_new = _share(risk_new, cw) - _share(risk_new, nw)
    return {"idi": slope_new - slope_old, "slope_old": slope_old, "slope_new": slope_new}


def reclassification_counts(outcome: HorizonOutcome, risk_old: np.ndarray, risk_new: np.ndarray,
                            cutoffs: Sequence[float]) -> dict[str, list[list[int]]]:
    """Patients by old (rows) x new (columns) category: events, non-events, censored before tau."""
    k = len(cutoffs) + 1
    old, new = categories(risk_old, cutoffs), categories(risk_new, cutoffs)
    unknown = ~outcome.case & ~outcome.control
    out = {}
    for name, mask in (("events", outcome.case), ("nonevents", outcome.control), ("censored", unknown)):
        table = np.zeros((k, k), np.int64)
        np.add.at(table, (old[mask], new[mask]), 1)
        out[name] = table.tolist()
    return out


def net_benefit(outcome: HorizonOutcome, risk: np.ndarray | None, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit at each threshold probability; ``risk=None`` is treat-all."""
    cw, nw = outcome.case_weight, outcome.control_weight
    total = cw.sum() + nw.sum()
    pt = np.asarray(thresholds, np.float64)
    if risk is None:
        tp, fp = np.full(pt.shape, cw.sum()), np.full(pt.shape, nw.sum())
    else:
        treated = np.asarray(risk)[:, None] >= pt[None, :]
        tp, fp = cw @ treated, nw @ treated
    return (tp - fp * pt / (1.0 - pt)) / total

"""Kaplan-Meier curves of DL-positive vs DL-negative patients and the log-rank test (lifelines)."""

from __future__ import annotations

import math

import numpy as np
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test

GROUPS = ("positive", "negative")


def _at(kmf: KaplanMeierFitter, horizon: float) -> dict[str, float]:
    """Survival and its 95% CI (lifelines' exponential Greenwood) at ``horizon``."""
    ci = kmf.confidence_interval_survival_function_
    row = ci[ci.index <= horizon].iloc[-1]
    surv = float(kmf.survival_function_at_times(horizon).iloc[0])
    return {"survival": surv, "survival_low": float(row.iloc[0]), "survival_high": float(row.iloc[1]),
            "incidence": 1.0 - surv, "incidence_low": 1.0 - float(row.iloc[1]),
            "incidence_high": 1.0 - float(row.iloc[0])}


def _curve(kmf: KaplanMeierFitter) -> dict[str, list[float]]:
    """The steps of the curve: time 0 and each time where the survival changes, plus the end."""
    surv = kmf.survival_function_.iloc[:, 0].to_numpy()
    ci = kmf.confidence_interval_survival_function_.to_numpy()
    times = kmf.survival_function_.index.to_numpy(np.float64)
    keep = np.r_[True, np.diff(surv) != 0]
    keep[-1] = True
    return {"time": times[keep].tolist(), "survival": surv[keep].tolist(),
            "low": ci[keep, 0].tolist(), "high": ci[keep, 1].tolist()}


def at_risk_times(max_time: float, ticks: int = 10) -> np.ndarray:
    """Round times (step 1, 2 or 5 x 10^k) from 0 to ``max_time`` for a numbers-at-risk table."""
    steps = [m * 10.0 ** e for e in range(-3, 7) for m in (1, 2, 5)]
    step = next(s for s in steps if max_time / s <= ticks)
    return np.round(np.arange(0.0, math.floor(max_time / step) * step + step / 2, step), 6)


def km_by_group(time: np.ndarray, event: np.ndarray, is_positive: np.ndarray, horizon: float) -> dict:
    """KM estimate per group (curve, value at ``horizon``, numbers at risk) and the log-rank test."""
    time, event, is_positive = np.asarray(time), np.asarray(event), np.asarray(is_positive, bool)
    ticks = at_risk_times(float(time.max()))
    out: dict = {"at_risk_times": ticks.tolist(), "groups": {}}
    for group, mask in zip(GROUPS, (is_positive, ~is_positive)):
        entry = {"n": int(mask.sum()), "events": int(event[mask].sum())}
        if mask.any():
            kmf = KaplanMeierFitter().fit(time[mask], event[mask], label=group)
            entry |= {"at_horizon": _at(kmf, horizon), "curve": _curve(kmf),
                      "at_risk": [int(np.sum(time[mask] >= t)) for t in ticks]}
        out["groups"][group] = entry
    if is_positive.any() and (~is_positive).any():
        test = logrank_test(time[is_positive], time[~is_positive], event[is_positive], event[~is_positive])
        out["logrank"] = {"statistic": float(test.test_statistic), "p": float(test.p_value)}
    else:
        out["logrank"] = {"statistic": math.nan, "p": math.nan}
    return out

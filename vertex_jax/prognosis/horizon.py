"""Outcome at a fixed horizon under censoring: Kaplan-Meier curves and IPCW weights.

At horizon ``tau`` a patient is a *case* (fracture by ``tau``), a *control* (followed
beyond ``tau`` without fracture) or unknown (censored before ``tau``). Unknowns get weight
0; cases weight ``1 / G(T-)`` and controls ``1 / G(tau)``, where ``G`` is the Kaplan-Meier
estimate of the censoring distribution (Uno et al. 2007), with events at a tied time
counted before the censorings there. Weighted proportions then estimate what they would
in the uncensored cohort (the weighted share of cases equals the Kaplan-Meier cumulative
incidence by ``tau`` exactly, ties included), and every horizon statistic here
(time-dependent AUC, NRI, IDI, net benefit) uses the same weights. Without censoring
before ``tau`` all weights are 1 and the formulas are the binary-outcome ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from lifelines import KaplanMeierFitter


def kaplan_meier(time: np.ndarray, event: np.ndarray, *, reverse: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Product-limit estimate (lifelines' ``KaplanMeierFitter``): the times of its timeline and
    the survival just after each.

    ``reverse``: the censoring distribution instead, with events at a tied time leaving
    the risk set before the censorings there (as scikit-survival does): each event is moved
    to the float just below its time, where the censoring curve does not step.
    """
    time, event = np.asarray(time, np.float64), np.asarray(event, bool)
    if reverse:
        time, event = np.where(event, np.nextafter(time, -np.inf), time), ~event
    curve = KaplanMeierFitter().fit(time, event).survival_function_
    return curve.index.to_numpy(np.float64), curve.iloc[:, 0].to_numpy(np.float64)


def step_value(curve: tuple[np.ndarray, np.ndarray], t: np.ndarray | float, *,
               left: bool = False) -> np.ndarray:
    """S(t) of a right-continuous step curve (``left``: the limit S(t-)); 1 before the first step."""
    times, values = curve
    idx = np.searchsorted(times, t, side="left" if left else "right")
    return np.where(idx == 0, 1.0, values[np.maximum(idx - 1, 0)])


@dataclasses.dataclass(frozen=True)
class HorizonOutcome:
    """IPCW weights of cases and controls at ``horizon`` (0 where a patient is not one)."""

    horizon: float
    case_weight: np.ndarray
    control_weight: np.ndarray

    @property
    def case(self) -> np.ndarray:
        return self.case_weight > 0

    @property
    def control(self) -> np.ndarray:
        return self.control_weight > 0

    @property
    def event_rate(self) -> float:
        """Weighted share of cases: the cumulative incidence by ``horizon``."""
        cases = self.case_weight.sum()
        return float(cases / (cases + self.control_weight.sum()))


def horizon_outcome(time: np.ndarray, event: np.ndarray, horizon: float) -> HorizonOutcome:
    """Cases, controls and their IPCW weights at ``horizon``."""
    time, event = np.asarray(time, np.float64), np.asarray(event, bool)
    censoring = kaplan_meier(time, event, reverse=True)
    case = event & (time <= horizon)
    control = time > horizon
    case_weight = np.zeros(len(time))
    case_weight[case] = 1.0 / step_value(censoring, time[case], left=True)
    control_weight = np.zeros(len(time))
    if control.any():  # then G(horizon) > 0
        control_weight[control] = 1.0 / step_value(censoring, horizon)
    return HorizonOutcome(float(horizon), case_weight, control_weight)

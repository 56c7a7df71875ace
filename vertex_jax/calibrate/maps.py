"""Calibration maps from a task's logit z to a probability, fitted on validation cases.

- ``temperature``: p = sigmoid(z / T), T > 0 minimising the validation log-loss (one
  parameter; the ranking, and so AUROC, is unchanged). It rescales the logits but cannot
  shift them: a model whose risks are off by a constant (calibration intercept != 0)
  needs Platt scaling;
- ``platt``: p = sigmoid(a z + b), the unpenalised logistic regression of the label on z
  (ranking unchanged for a > 0);
- ``isotonic``: the isotonic regression of the label on z (scikit-learn), served as a
  piecewise-linear table (knots z_i -> p_i at least ``ISOTONIC_MIN_GAP`` apart, constant
  beyond the ends, see :func:`thin_knots`). It can tie cases the
  raw scores ranked apart, so AUROC can change; below 1,000 validation cases it overfits
  (scikit-learn's advice) and fitting warns.

:meth:`TaskMap.probabilities` is written with array functions common to NumPy and
``jax.numpy`` (``xp``), so the exported graphs compute exactly the function fitted here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, log_expit

from vertex_jax.errors import UserError

METHODS = ("temperature", "platt", "isotonic")
# Updates of a model's current map (a site's small sample): "intercept" keeps its slope and
# refits its intercept (recalibration in the large, the first step of Steyerberg's updating
# hierarchy); the result is served as a Platt map.
UPDATES = ("intercept",)
ISOTONIC_MIN_CASES = 1000
ISOTONIC_MIN_GAP = 0.05  # logit units between served knots (odds resolution ~5%)


class CalibrationError(UserError, ValueError):
    """A calibration that cannot be fitted or read (named task, what is wrong)."""


def _sigmoid(x: Any, xp: Any) -> Any:
    return 1.0 / (1.0 + xp.exp(-x))


def _log_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels ``y`` under logits ``z``."""
    return float(-np.mean(y * log_expit(z) + (1 - y) * log_expit(-z)))


@dataclasses.dataclass(frozen=True)
class TaskMap:
    """One task's fitted map and the cases it was fitted on."""

    method: str
    params: dict[str, Any]
    n: int
    positives: int

    def probabilities(self, z: Any, xp: Any = np) -> Any:
        """Calibrated probabilities of logits ``z`` (any shape; NumPy or jax.numpy arrays)."""
        if self.method == "temperature":
            return _sigmoid(z / self.params["temperature"], xp)
        if self.method == "platt":
            return _sigmoid(self.params["slope"] * z + self.params["intercept"], xp)
        knots = np.asarray(self.params["knots"], np.float64)
        values = np.asarray(self.params["values"], np.float64)
        if knots.size == 1:
            return float(values[0]) + 0.0 * z
        widths = np.diff(knots)
        slopes = np.diff(values) / widths
        # np.interp with clipped ends, as a sum of ramps: only elementwise operations and a
        # reduction, which every export runtime has (float32 constants in a graph).
        dtype = np.float64 if xp is np else np.float32
        ramps = xp.clip(z[..., None] - knots[:-1].astype(dtype), 0.0, widths.astype(dtype))
        return float(values[0]) + xp.sum(ramps * slopes.astype(dtype), axis=-1)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **self.params, "n": self.n, "positives": self.positives}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TaskMap":
        d = dict(d)
        method = d.pop("method", None)
        if method not in METHODS:
            raise CalibrationError(f"unknown calibration method {method!r}; expected one of {METHODS}")
        n, positives = int(d.pop("n", 0)), int(d.pop("positives", 0))
        return cls(method, d, n, positives)

    def describe(self) -> str:
        if self.method == "temperature":
            return f"temperature T={self.params['temperature']:.3f}"
        if self.method == "platt":
            return f"platt a={self.params['slope']:.3f} b={self.params['intercept']:+.3f}"
        return f"isotonic ({len(self.params['knots'])} knots)"


def _fit_temperature(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    # The log-loss is convex in the inverse temperature 1/T; search it on a log scale.
    res = minimize_scalar(lambda u: _log_loss(z * np.exp(u), y), bounds=(-9.0, 9.0), method="bounded",
                          options={"xatol": 1e-10})
    return {"temperature": float(np.exp(-res.x))}


def _fit_platt(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
    def loss_and_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = w[0] * z + w[1]
        r = expit(s) - y
        return _log_loss(s, y), np.array([np.mean(r * z), np.mean(r)])

    res = minimize(loss_and_grad, np.array([1.0, 0.0]), jac=True, method="BFGS", options={"gtol": 1e-10})
    if not np.all(np.isfinite(res.x)):
        raise CalibrationError("Platt fit did not converge")
    return {"slope": float(res.x[0]), "intercept": float(res.x[1])}


def _fit_isotonic(z: np.ndarray, y: np.ndarray, min_gap: float = ISOTONIC_MIN_GAP) -> dict[str, list[float]]:
    from sklearn.isotonic import IsotonicRegression

    if z.size < ISOTONIC_MIN_CASES:
        logging.warning("isotonic calibration on %d cases: below %d it tends to overfit (scikit-learn's "
                        "advice); temperature or platt is safer", z.size, ISOTONIC_MIN_CASES)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(z, y)
    knots = thin_knots(iso.X_thresholds_, min_gap)
    return {"knots": knots.tolist(), "values": iso.predict(knots).tolist()}


def thin_knots(knots: np.ndarray, min_gap: float) -> np.ndarray:
    """Knots at least ``min_gap`` apart (the first and last kept). A step of the fitted table
    narrower than that would make the served map steeper than float32 logits can follow: a
    logit that differs by 1e-6 between runtimes would move the probability by 1e-6 x slope."""
    if min_gap <= 0 or knots.size < 3:
        return np.asarray(knots, np.float64)
    kept = [knots[0]]
    for x in knots[1:-1]:
        if x - kept[-1] >= min_gap and knots[-1] - x >= min_gap:
            kept.append(x)
    kept.append(knots[-1])
    return np.asarray(kept, np.float64)


_FITS = {"temperature": _fit_temperature, "platt": _fit_platt, "isotonic": _fit_isotonic}


def fit_map(method: str, logits: np.ndarray, labels: np.ndarray, task: str = "task") -> TaskMap:
    """Fit ``method`` on one task's validation logits and 0/1 labels."""
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    z, y = np.asarray(logits, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    if z.shape != y.shape or not np.all(np.isfinite(z)) or not np.isin(y, (0.0, 1.0)).all():
        raise CalibrationError(f"task '{task}': calibration needs finite logits and 0/1 labels of equal length")
    positives = int(y.sum())
    if positives in (0, y.size):
        raise CalibrationError(f"task '{task}': {y.size} labelled case(s), all of one class; "
                               "a calibration cannot be fitted")
    pos, neg = z[y == 1], z[y == 0]
    if method == "platt" and (pos.min() > neg.max() or pos.max() < neg.min()):
        raise CalibrationError(f"task '{task}': the logits separate the classes, so Platt scaling has no "
                               "finite fit; use temperature or isotonic")
    return TaskMap(method, _FITS[method](z, y), int(y.size), positives)


def update_intercept(previous: TaskMap | None, logits: np.ndarray, labels: np.ndarray,
                     task: str = "task") -> TaskMap:
    """``previous`` (temperature, Platt or none: sigmoid) with its intercept refitted on
    (logits, labels) by maximum likelihood, the slope kept: afterwards the mean probability
    on these cases equals their prevalence."""
    z, y = np.asarray(logits, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    if z.shape != y.shape or not np.all(np.isfinite(z)) or not np.isin(y, (0.0, 1.0)).all():
        raise CalibrationError(f"task '{task}': calibration needs finite logits and 0/1 labels of equal length")
    positives = int(y.sum())
    if positives in (0, y.size):
        raise CalibrationError(f"task '{task}': {y.size} labelled case(s), all of one class; "
                               "an intercept cannot be fitted")
    if previous is None:
        slope, intercept = 1.0, 0.0
    elif previous.method == "temperature":
        slope, intercept = 1.0 / previous.params["temperature"], 0.0
    elif previous.method == "platt":
        slope, intercept = previous.params["slope"], previous.params["intercept"]
    else:
        raise CalibrationError(f"task '{task}': an intercept update keeps a linear map's slope, and the "
                               "current map is isotonic", todo="refit with --method platt")
    offset = slope * z + intercept
    res = minimize_scalar(lambda d: _log_loss(offset + d, y), bounds=(-20.0, 20.0), method="bounded",
                          options={"xatol": 1e-10})
    return TaskMap("platt", {"slope": float(slope), "intercept": float(intercept + res.x)}, int(y.size), positives)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A model's calibration: one map per task, and where it was fitted."""

    maps: dict[str, TaskMap]
    fitted_on: dict[str, Any]  # split, domain, checkpoint step, ...

    def probabilities(self, logits: Any, tasks: Sequence[str], xp: Any = np) -> Any:
        """[n, T] calibrated probabilities (column i is ``tasks[i]``; a task without a map
        keeps its sigmoid)."""
        cols = [self.maps[t].probabilities(logits[:, i], xp) if t in self.maps else _sigmoid(logits[:, i], xp)
                for i, t in enumerate(tasks)]
        return xp.stack(cols, axis=1)

    def describe(self) -> str:
        f = self.fitted_on
        where = f"split '{f.get('split', '?')}'" + (f" of {f['domain']}" if f.get("domain") else "") + \
            (f", step {f['step']}" if "step" in f else "")
        return "; ".join(f"{t}: {m.describe()} (n={m.n})" for t, m in self.maps.items()) + f", fitted on {where}"

    def to_dict(self) -> dict[str, Any]:
        return {"fitted_on": dict(self.fitted_on), "tasks": {t: m.to_dict() for t, m in self.maps.items()}}

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "Calibration | None":
        """The calibration stored in a model card, or None when the model has none."""
        saved = card.get("calibration")
        if not saved:
            return None
        return cls({t: TaskMap.from_dict(m) for t, m in saved["tasks"].items()}, dict(saved.get("fitted_on", {})))


def fit_calibration(method: str, logits: np.ndarray, labels: np.ndarray, label_mask: np.ndarray,
                    tasks: Sequence[str], fitted_on: Mapping[str, Any], previous: Calibration | None = None
                    ) -> tuple[Calibration, dict[str, str]]:
    """Fit one map per task on its labelled cases (``method`` "intercept": update
    ``previous``'s maps); returns (calibration, {task: why not fitted})."""
    maps, skipped = {}, {}
    for i, task in enumerate(tasks):
        keep = np.asarray(label_mask)[:, i] > 0
        z, y = np.asarray(logits)[keep, i], np.asarray(labels)[keep, i]
        before = previous.maps.get(task) if previous else None
        try:
            if method == "intercept":
                maps[task] = update_intercept(before, z, y, task)
            else:
                maps[task] = fit_map(method, z, y, task)
        except CalibrationError as e:
            skipped[task] = str(e)
    return Calibration(maps, {"method": method, **fitted_on}), skipped

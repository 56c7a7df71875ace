"""External minus internal: the change of each metric between two independent evaluations.

Each report (``evaluate``'s report.json) gives a metric with its own 95% interval; the two
samples share no case, so the interval of the difference follows from the two intervals by
MOVER (the method of variance estimates recovery; Newcombe 1998 for proportions from
Wilson intervals, Zou & Donner 2008 in general)::

    d = e - i,  lower = d - sqrt((e - e_lo)^2 + (i_hi - i)^2),  upper = d + sqrt((e_hi - e)^2 + (i - i_lo)^2)

For symmetric (Wald) intervals this is d ± z sqrt(se_e^2 + se_i^2); for proportions it keeps
the Wilson intervals' asymmetry near 0 and 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# (row name, how to read (value, interval) from a report's "overall" entry)
METRICS: tuple[str, ...] = ("auroc", "calibration_intercept", "calibration_slope", "ece", "brier")


def mover(external: float | None, external_ci: Sequence[float] | None, internal: float | None,
          internal_ci: Sequence[float] | None) -> dict[str, Any]:
    """``{"value": e - i, "ci": [lo, hi]}`` (ci None when either interval is missing)."""
    if external is None or internal is None:
        return {"value": None, "ci": None}
    d = external - internal
    if not external_ci or not internal_ci:
        return {"value": d, "ci": None}
    (e_lo, e_hi), (i_lo, i_hi) = external_ci, internal_ci
    lower = d - math.sqrt((external - e_lo) ** 2 + (i_hi - internal) ** 2)
    upper = d + math.sqrt((e_hi - external) ** 2 + (internal - i_lo) ** 2)
    return {"value": d, "ci": [lower, upper]}


def _estimate(overall: Mapping[str, Any], metric: str) -> tuple[float | None, list[float] | None]:
    """(value, 95% interval) of ``metric`` in a report's ``overall`` entry."""
    cal = overall.get("calibration") or {}
    if metric == "auroc":
        auroc = overall.get("auroc") or {}
        return auroc.get("value"), (auroc.get("delong") or {}).get("ci")
    if metric in ("calibration_intercept", "calibration_slope"):
        name = metric.split("_")[1]
        return cal.get(name), cal.get(f"{name}_ci")
    if metric == "ece":
        ece = cal.get("ece") or {}
        return ece.get("value"), ece.get("ci")
    return cal.get(metric), None


def _points(overall: Mapping[str, Any]) -> dict[str, tuple[float | None, list[float] | None]]:
    """{"<point> sensitivity"/"<point> specificity": (value, Wilson interval)}."""
    out = {}
    for name, point in (overall.get("operating_points") or {}).items():
        for what in ("sensitivity", "specificity"):
            entry = point.get(what) or {}
            out[f"{name} {what}"] = (entry.get("value"), entry.get("ci"))
    return out


def task_rows(internal: Mapping[str, Any], external: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per metric: internal and external value and interval, and their difference."""
    pairs = {m: (_estimate(internal, m), _estimate(external, m)) for m in METRICS}
    ext_points = _points(external)
    pairs |= {name: (value, ext_points.get(name, (None, None))) for name, value in _points(internal).items()}
    rows = []
    for metric, ((i, i_ci), (e, e_ci)) in pairs.items():
        rows.append({"metric": metric, "internal": i, "internal_ci": i_ci, "external": e, "external_ci": e_ci,
                     "difference": mover(e, e_ci, i, i_ci)})
    return rows


def compare_reports(internal: Mapping[str, Any], external: Mapping[str, Any]) -> dict[str, Any]:
    """Per task evaluated in both reports: its case counts and :func:`task_rows`."""
    first = lambda report: next(iter(report["models"].values()))["tasks"]  # noqa: E731
    inside, outside = first(internal), first(external)
    out = {}
    for task in [t for t in outside if t in inside]:
        i, e = inside[task]["overall"], outside[task]["overall"]
        out[task] = {"internal_n": i["n"], "internal_positives": i["positives"],
                     "external_n": e["n"], "external_positives": e["positives"],
                     "rows": task_rows(i, e)}
    return out

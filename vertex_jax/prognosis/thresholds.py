"""Cut-offs that make each score DL-positive / DL-negative.

Sources, in order of precedence: ``--threshold column=value``; then ``thresholds.json``
from the evaluation report (``{"pvf": {"youden": 0.41, ...}, ...}``, read and checked by
:func:`vertex_jax.evaluate.thresholds.read_thresholds`, taken under the task
of the column: ``pvf_prob`` and ``pvf_logit`` -> ``pvf``; probability cut-offs become
logits for ``*_logit`` columns); then 0.5 for ``*_prob`` columns (0 for ``*_logit``),
with a warning. Other columns need an explicit value. A patient is positive when the
score is >= the cut-off.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence

from vertex_jax.evaluate.thresholds import read_thresholds
from vertex_jax.problems import ProblemsError
from vertex_jax.prognosis.data import CohortDataError


@dataclasses.dataclass(frozen=True)
class Threshold:
    value: float
    source: str  # e.g. "thresholds.json: pvf.youden", "--threshold", "default 0.5"


def task_of(column: str) -> str:
    """``pvf_prob`` / ``pvf_logit`` -> ``pvf``; any other name is its own task."""
    for suffix in ("_prob", "_logit"):
        if column.endswith(suffix):
            return column[: -len(suffix)]
    return column


def parse_overrides(items: Sequence[str]) -> dict[str, float]:
    """``["pvf_prob=0.4", ...]`` -> ``{"pvf_prob": 0.4}``."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name.strip() or not math.isfinite(number):
            raise CohortDataError("--threshold", [f"expected COLUMN=NUMBER, got '{item}'"])
        out[name.strip()] = number
    return out


def _read_table(path: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """``thresholds.json`` as the evaluation report reads it (one reader, one set of checks)."""
    try:
        return read_thresholds(path)
    except ProblemsError as e:
        raise CohortDataError(e.source, e.problems) from None


def _check(value: float, column: str, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise CohortDataError(where, [f"cut-off for '{column}' must be a finite number, got {value!r}"])
    if column.endswith("_prob") and not 0.0 <= value <= 1.0:
        raise CohortDataError(where, [f"cut-off for probability column '{column}' must be in [0, 1], "
                                      f"got {value}"])
    return float(value)


def resolve_thresholds(columns: Sequence[str], *, path: str | os.PathLike | None = None,
                       key: str = "youden", overrides: Mapping[str, float] | None = None
                       ) -> tuple[dict[str, Threshold], list[str]]:
    """The cut-off of each score column and warnings about defaults that were used."""
    overrides = dict(overrides or {})
    if unknown := sorted(set(overrides) - set(columns)):
        raise CohortDataError("--threshold", [f"column(s) {unknown} are not analysed scores {list(columns)}"])
    table = _read_table(path) if path is not None else {}
    out: dict[str, Threshold] = {}
    notes: list[str] = []
    for col in columns:
        task = task_of(col)
        if col in overrides:
            out[col] = Threshold(_check(overrides[col], col, "--threshold"), "--threshold")
        elif path is not None and task in table:
            rules = table[task]
            if key not in rules:
                raise CohortDataError(str(path), [f"no '{key}' cut-off under '{task}' (found {sorted(rules)})"])
            prob = rules[key]["threshold"]
            if prob is None:
                raise CohortDataError(str(path), [f"'{task}.{key}' is null (no cut-off was chosen)"])
            if col.endswith("_logit"):
                if not 0.0 < prob < 1.0:
                    raise CohortDataError(str(path), [f"'{task}.{key}' = {prob} has no logit"])
                value = math.log(prob / (1.0 - prob))
            else:
                value = _check(prob, col, str(path))
            out[col] = Threshold(value, f"{os.path.basename(path)}: {task}.{key}")
        elif col.endswith(("_prob", "_logit")):
            out[col] = Threshold(0.5 if col.endswith("_prob") else 0.0, "default (probability 0.5)")
            where = f"in {path}" if path is not None else "(no --thresholds file)"
            notes.append(f"warning: no cut-off for '{col}' {where}; using probability 0.5")
        else:
            raise CohortDataError("--threshold", [f"no cut-off for score column '{col}'; "
                                                  f"pass --threshold {col}=VALUE"])
    return out, notes

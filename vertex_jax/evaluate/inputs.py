"""What a report is made of: the models (one table, two tables, or two columns of one table),
the rows evaluated and the rows thresholds are chosen on, and fixed thresholds if given."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vertex_jax.evaluate.table import ScoresError, Table, match_cases, parse_scores, read_scores
from vertex_jax.evaluate.thresholds import fixed_thresholds, read_thresholds
from vertex_jax.tasks import TASKS
from vertex_jax.errors import ConfigError

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Models as (label, table) restricted to the rows in use, aligned row by row.

    ``evaluated`` and ``threshold_rows`` are masks over those rows (``threshold_rows`` is None
    with fixed thresholds); ``compared`` the tasks compared when there are two models.
    """

    models: list[tuple[str, Table]]
    compared: tuple[str, ...]
    evaluated: np.ndarray
    threshold_rows: np.ndarray | None
    thresholds_from: str
    notes: list[str]


def _frame(scores: pd.DataFrame | PathLike) -> pd.DataFrame:
    return scores if isinstance(scores, pd.DataFrame) else read_scores(scores)


def _task_of(column: str) -> str:
    found = [t for t in TASKS if column.startswith(f"{t}_")]
    if len(found) != 1:
        raise ConfigError(f"compare column '{column}': cannot tell its task; name it "
                         f"{' or '.join(f'{t}_...' for t in TASKS)}")
    return found[0]


def _models(scores: pd.DataFrame | PathLike, compare: pd.DataFrame | PathLike | None,
            compare_columns: Sequence[tuple[str, str]] | None, tasks: Sequence[str] | None,
            labels: Sequence[str] | None) -> tuple[list[tuple[str, Table]], tuple[str, ...]]:
    """[(label, whole table)] for one or two models, and the tasks compared."""
    if compare is not None and compare_columns:
        raise ConfigError("give either a second score table (compare) or two score columns "
                         "(compare_columns), not both")
    df = _frame(scores)
    if compare_columns:
        pairs = {_task_of(a): (a, b) for a, b in compare_columns}
        if len(pairs) != len(compare_columns):
            raise ConfigError(f"compare_columns: one pair per task, got {list(compare_columns)}")
        if tasks and set(pairs) - set(tasks):
            raise ConfigError(f"compare_columns: task(s) {sorted(set(pairs) - set(tasks))} are not among "
                             f"the tasks asked for {list(tasks)}")
        compared = tuple(t for t in TASKS if t in pairs)
        a = parse_scores(df, tasks=compared, prob_columns={t: pairs[t][0] for t in compared})
        b = parse_scores(df, tasks=compared, prob_columns={t: pairs[t][1] for t in compared})
        default = list(pairs[compared[0]]) if len(pairs) == 1 else ["A", "B"]
    elif compare is not None:
        a = parse_scores(df, tasks=tasks)
        other = _frame(compare)
        b = parse_scores(other, tasks=[t for t in (tasks or TASKS) if t in other.columns
                                       and f"{t}_prob" in other.columns] or tasks)
        compared = tuple(t for t in a.tasks if t in b.tasks)
        if not compared:
            raise ScoresError(f"{a.source} vs {b.source}",
                              [f"no task in common: {list(a.tasks)} vs {list(b.tasks)}"])
        stems = [Path(a.source).stem, Path(b.source).stem]
        default = stems if stems[0] != stems[1] else ["A", "B"]
    else:
        return [(labels[0] if labels else "model", parse_scores(df, tasks=tasks))], ()
    labels = list(labels or default)
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ConfigError(f"comparison needs two distinct labels, got {labels}")
    return [(labels[0], a), (labels[1], b)], compared


def _rows(table: Table, eval_split: str, threshold_split: str | None,
          thresholds_on_eval: bool) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Masks of the evaluated rows and of the threshold rows (None if threshold_split is None), notes."""
    ev = table.rows(eval_split)
    if not ev.any():
        raise ScoresError(table.source, [f"no rows with split '{eval_split}' to evaluate "
                                         f"(splits present: {table.split_counts()})"])
    if threshold_split is None:
        return ev, None, []
    thr = table.rows(threshold_split)
    if not thr.any():
        problem = f"no rows with split '{threshold_split}' to choose thresholds on " \
                  f"(splits present: {table.split_counts()})"
    elif (thr & ev).any():
        problem = f"the threshold split '{threshold_split}' overlaps the evaluated split '{eval_split}'"
    else:
        return ev, thr, []
    if not thresholds_on_eval:
        raise ScoresError(table.source, [
            f"{problem}. Thresholds must be chosen on cases other than those evaluated: add a "
            f"'{threshold_split}' split, name another with --threshold-split, give fixed thresholds with "
            "--thresholds thresholds.json, or choose them on the evaluated cases anyway with "
            "--thresholds-on-eval (optimistic)."])
    return ev, ev, [f"{problem}; thresholds were chosen on the evaluated cases ('{eval_split}') as "
                    "requested, so the operating-point metrics are optimistic."]


def load_fixed_thresholds(thresholds: Mapping | PathLike) -> tuple[dict, str]:
    """Fixed thresholds (a mapping or a thresholds.json path) checked, and where they came from."""
    if isinstance(thresholds, Mapping):
        return fixed_thresholds(thresholds, "the thresholds given"), "the thresholds given"
    return read_thresholds(thresholds), str(thresholds)


def gather_inputs(scores: pd.DataFrame | PathLike, *, compare: pd.DataFrame | PathLike | None = None,
                  compare_columns: Sequence[tuple[str, str]] | None = None, tasks: Sequence[str] | None = None,
                  labels: Sequence[str] | None = None, eval_split: str = "test",
                  threshold_split: str | None = "val", thresholds_on_eval: bool = False) -> Inputs:
    """Read and check the models' tables and pick their rows (threshold_split None: fixed thresholds)."""
    models, compared = _models(scores, compare, compare_columns, tasks, labels)
    (label_a, a), *rest = models
    ev, thr, notes = _rows(a, eval_split, threshold_split, thresholds_on_eval)
    used = ev if thr is None else ev | thr
    tables = [(label_a, a.subset(used))]
    if compare_columns:  # the same table read through other columns
        tables.append((rest[0][0], rest[0][1].subset(used)))
    elif rest:  # a second table: its rows of the same splits, in the first one's order
        label_b, b = rest[0]
        b_ev, b_thr, _ = _rows(b, eval_split, threshold_split, thresholds_on_eval)
        tables.append((label_b, match_cases(tables[0][1], b.subset(b_ev if b_thr is None else b_ev | b_thr),
                                            compared)))
    source = "fixed thresholds" if thr is None else "evaluated cases" if notes else threshold_split
    return Inputs(tables, compared, ev[used], None if thr is None else thr[used], source, notes)

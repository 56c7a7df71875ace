"""The per-case score table (scores.csv schema): reading, validation, split selection.

Every problem found is reported at once, naming the file, column and rows (CSV line numbers,
header = line 1, when the table came from a file; index labels for a DataFrame) with their image_id.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vertex_jax.problems import ProblemsError
from vertex_jax.tasks import TASKS

ALL = "all"  # split name meaning every row
_SEX = {"F": "F", "FEMALE": "F", "M": "M", "MALE": "M"}


class ScoresError(ProblemsError):
    """Every problem found in a score table, one per line."""


@dataclasses.dataclass(frozen=True)
class Table:
    """A validated score table.

    ``raw`` holds the rows as given; ``cases`` one typed row per raw row: row (index label in the
    table given; for a file, the row's position), image_id, split ('' if blank), age (float, NaN
    if blank), sex ('F'/'M'/''), domain, and for each task ``y_<task>`` (1.0/0.0/NaN unknown) and ``p_<task>``.
    """

    source: str
    raw: pd.DataFrame
    cases: pd.DataFrame
    tasks: tuple[str, ...]
    prob_columns: dict[str, str]
    from_file: bool

    def where(self, mask: np.ndarray | pd.Series, limit: int = 8) -> str:
        """Human-readable location of the rows where ``mask`` holds."""
        pos = np.flatnonzero(np.asarray(mask, bool))
        rows = self.cases["row"].to_numpy()[pos] + (2 if self.from_file else 0)
        ids = self.cases["image_id"].to_numpy()[pos]
        refs = [f"{r} ({i})" for r, i in zip(rows[:limit], ids[:limit])]
        more = f" (+{pos.size - limit} more)" if pos.size > limit else ""
        return ("line(s) " if self.from_file else "row(s) ") + ", ".join(refs) + more

    def rows(self, split: str) -> np.ndarray:
        """Boolean mask of the rows in ``split`` ('all' = every row)."""
        if split == ALL:
            return np.ones(len(self.cases), bool)
        return (self.cases["split"] == split).to_numpy()

    def subset(self, mask: np.ndarray) -> Table:
        """The rows where ``mask`` holds (positions renumbered; ``where`` still names the original rows)."""
        mask = np.asarray(mask, bool)
        return dataclasses.replace(self, raw=self.raw[mask].reset_index(drop=True),
                                   cases=self.cases[mask].reset_index(drop=True))

    def split_counts(self) -> str:
        counts = self.cases["split"].replace("", "(blank)").value_counts()
        return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "none"


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read a scores.csv as text (nothing guessed); ``attrs['source']`` records the path."""
    path = Path(path)
    if not path.is_file():
        raise ScoresError(str(path), ["file not found"])
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ScoresError(str(path), [f"not a readable CSV file: {e}"]) from None
    df.attrs["source"] = str(path)
    return df


def _text(col: pd.Series) -> pd.Series:
    return col.astype("string").str.strip().fillna("")


def _numbers(col: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(values as float with NaN for blank/bad, blank mask, not-a-number mask)."""
    text = _text(col)
    blank = text.isin(["", "nan", "NaN", "<NA>", "None"])
    values = pd.to_numeric(text.where(~blank), errors="coerce").astype("float64")
    return values, blank, ~blank & values.isna()


def parse_scores(df: pd.DataFrame, *, tasks: Sequence[str] | None = None,
                 prob_columns: Mapping[str, str] | None = None, source: str | None = None) -> Table:
    """Validate a score table and type its columns.

    tasks: the tasks to evaluate (default: every task with a label column and a probability column).
    prob_columns: probability column per task (default ``<task>_prob``).
    """
    source = source or df.attrs.get("source", "scores table")
    from_file = "source" in df.attrs
    # rows are named by index label (= position in the file for a table read by read_scores)
    rows = df.index.to_numpy() if pd.api.types.is_integer_dtype(df.index) else np.arange(len(df))
    df = df.reset_index(drop=True)
    prob_columns = dict(prob_columns or {})
    problems: list[str] = []
    unknown = [t for t in (tasks or []) if t not in TASKS]
    if unknown:
        raise ScoresError(source, [f"unknown task(s) {unknown}; known: {list(TASKS)}"])
    if "image_id" not in df.columns:
        problems.append("missing column 'image_id'")
    candidates = list(tasks) if tasks else [t for t in TASKS if t in df.columns
                                            and prob_columns.get(t, f"{t}_prob") in df.columns]
    for t in candidates:
        for col in (t, prob_columns.get(t, f"{t}_prob")):
            if col not in df.columns:
                problems.append(f"task '{t}': missing column '{col}'")
    if not candidates and not problems:
        problems.append("no task to evaluate: needs a label column and a probability column "
                        f"(pvf + pvf_prob or osteo + osteo_prob); columns are {list(df.columns)}")
    if problems:
        raise ScoresError(source, problems)

    cases = pd.DataFrame({"row": rows})
    cases["image_id"] = _text(df["image_id"])
    cases["split"] = _text(df["split"]) if "split" in df.columns else ""
    cases["domain"] = _text(df["domain"]) if "domain" in df.columns else ""
    columns = {t: prob_columns.get(t, f"{t}_prob") for t in candidates}
    table = Table(source, df, cases, tuple(candidates), columns, from_file)

    blank_id = cases["image_id"] == ""
    if blank_id.any():
        problems.append(f"column 'image_id': blank at {table.where(blank_id)}")
    dup = cases["image_id"].duplicated(keep=False) & ~blank_id
    if dup.any():
        problems.append(f"column 'image_id': duplicated values {sorted(set(cases['image_id'][dup]))[:5]} "
                        f"at {table.where(dup)}")
    if "age" in df.columns:
        cases["age"], _, bad = _numbers(df["age"])
        if bad.any():
            problems.append(f"column 'age': not a number at {table.where(bad)}")
    else:
        cases["age"] = np.nan
    if "sex" in df.columns:
        text = _text(df["sex"]).str.upper()
        cases["sex"] = text.map(_SEX).fillna("")
        bad = (text != "") & (cases["sex"] == "")
        if bad.any():
            problems.append(f"column 'sex': expected F/M or blank, got {sorted(set(df['sex'][bad]))[:5]} "
                            f"at {table.where(bad)}")
    else:
        cases["sex"] = ""
    for t in candidates:
        labels, _, bad = _numbers(df[t])
        bad |= labels.notna() & ~labels.isin([0.0, 1.0])
        if bad.any():
            problems.append(f"column '{t}': labels must be 0, 1 or blank; got "
                            f"{sorted(set(df[t][bad].astype(str)))[:5]} at {table.where(bad)}")
        cases[f"y_{t}"] = labels.where(~bad)
        col = columns[t]
        probs, blank, bad = _numbers(df[col])
        if bad.any():
            problems.append(f"column '{col}': not a number at {table.where(bad)}")
        if blank.any():
            problems.append(f"column '{col}': missing (NaN/blank) probability at {table.where(blank)}")
        outside = probs.notna() & ((probs < 0) | (probs > 1))
        if outside.any():
            problems.append(f"column '{col}': probability outside [0, 1] at {table.where(outside)}")
        cases[f"p_{t}"] = probs
    if problems:
        raise ScoresError(source, problems)
    return table


def match_cases(a: Table, b: Table, tasks: Sequence[str]) -> Table:
    """The rows of ``b`` in ``a``'s order; both must hold the same cases (image_id) with the
    same split and the same labels for ``tasks``. ``a`` and ``b`` are the rows in use."""
    ids_a, ids_b = a.cases["image_id"], b.cases["image_id"]
    problems = []
    only_a = ~ids_a.isin(set(ids_b)).to_numpy()
    if only_a.any():
        problems.append(f"{only_a.sum()} case(s) of {a.source} are not among the cases of the same "
                        f"split(s) in {b.source}: {a.where(only_a)}")
    only_b = ~ids_b.isin(set(ids_a)).to_numpy()
    if only_b.any():
        problems.append(f"{only_b.sum()} case(s) of {b.source} are not among the cases of the same "
                        f"split(s) in {a.source}: {b.where(only_b)}")
    if problems:
        raise ScoresError(f"{a.source} vs {b.source}", problems)
    order = pd.Series(np.arange(len(ids_b)), index=ids_b)[ids_a].to_numpy()
    b = dataclasses.replace(b, raw=b.raw.iloc[order].reset_index(drop=True),
                            cases=b.cases.iloc[order].reset_index(drop=True))
    checks = [("split", a.cases["split"].to_numpy() != b.cases["split"].to_numpy())]
    for t in tasks:
        ya, yb = a.cases[f"y_{t}"].to_numpy(), b.cases[f"y_{t}"].to_numpy()
        checks.append((t, ~((ya == yb) | (np.isnan(ya) & np.isnan(yb)))))
    for column, differ in checks:
        if differ.any():
            problems.append(f"column '{column}': values differ from {b.source} at {a.where(differ)}")
    if problems:
        raise ScoresError(f"{a.source} vs {b.source}", problems)
    return b

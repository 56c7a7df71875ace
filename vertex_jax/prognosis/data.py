"""Reading and checking the inputs: scores CSV(s), follow-up CSV, and the analysed cohort.

Every problem in a file is reported at once (:class:`CohortDataError`), naming the file,
the CSV line (header = line 1) and the column.

Choices, also stated in the report:

* **Baseline row.** ``scores.csv`` has one row per image; each patient's baseline is the
  row with the lowest ``exam`` (rows with a blank ``exam`` come after numbered ones), and
  the first such row in file order when several tie or ``exam`` is absent.
* **Identifier mismatches.** Follow-up rows without scores only produce a warning: a
  follow-up registry usually covers more patients than the scored split or domain.
  Scored patients without follow-up are an error unless ``allow_missing_followup``: the
  analysed cohort would silently differ from the scored one, so the user must opt in.
  No patient in common is always an error (usually two id formats).
* **Missing values.** Complete-case analysis: patients with a blank covariate or score
  are left out, with counts per reason.
* **Covariates** come from the follow-up file when it has the column, else from the
  (first) scores file. Numeric columns enter as they are; text columns (``sex``) become
  0/1 indicators ``name=level`` against the alphabetically first level.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import pandas as pd
from vertex_jax.problems import ProblemsError

TIME = "followup_years"
EVENT = "incident_fracture"
FOLLOWUP_COLUMNS = ("patient_id", TIME, EVENT)
DEFAULT_SCORES = ("pvf_prob", "osteo_prob")
_EVENT_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
_SHOW = 5  # ids / lines quoted per problem


class CohortDataError(ProblemsError):
    """Every problem found in one input, one per line."""


@dataclasses.dataclass(frozen=True)
class Cohort:
    """One row per analysed patient: ``patient_id``, time, event, scores, covariate design."""

    frame: pd.DataFrame
    scores: tuple[str, ...]
    covariates: tuple[str, ...]  # design columns (after encoding text covariates)
    counts: dict[str, int]
    notes: tuple[str, ...]  # decisions and warnings, in the order they were made

    @property
    def time(self) -> np.ndarray:
        return self.frame[TIME].to_numpy(np.float64)

    @property
    def event(self) -> np.ndarray:
        return self.frame[EVENT].to_numpy(np.int64)


def _lines(mask: np.ndarray | pd.Series) -> str:
    """CSV line numbers (header = line 1) where ``mask`` holds, a few then a count."""
    lines = [str(i + 2) for i in np.flatnonzero(np.asarray(mask))]
    more = f" (+{len(lines) - _SHOW} more)" if len(lines) > _SHOW else ""
    return ", ".join(lines[:_SHOW]) + more


def _some(ids: Sequence[str]) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:_SHOW]) + (f" (+{len(ids) - _SHOW} more)" if len(ids) > _SHOW else "")


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV as stripped strings (blank = ""), or :class:`CohortDataError` naming the file."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError as e:
        raise CohortDataError(str(path), ["file not found"]) from e
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CohortDataError(str(path), [f"cannot read CSV: {e}"]) from e
    df.columns = [c.strip() for c in df.columns]
    return df.apply(lambda col: col.str.strip())


def _require(df: pd.DataFrame, columns: Sequence[str], source: str) -> None:
    if missing := [c for c in columns if c not in df.columns]:
        raise CohortDataError(source, [f"missing column(s) {missing}; found {list(df.columns)}"])


def _numbers(text: pd.Series) -> pd.Series:
    """Parsed floats; blank and unparsable are NaN (callers tell them apart)."""
    return pd.to_numeric(text.where(text != ""), errors="coerce").astype("float64")


def load_followup(path: str | os.PathLike) -> pd.DataFrame:
    """Validated follow-up: ``patient_id`` (str), ``followup_years`` (> 0), ``incident_fracture`` (0/1).

    Other columns are kept as text (possible covariates).
    """
    source = str(path)
    df = read_table(path)
    _require(df, FOLLOWUP_COLUMNS, source)
    problems: list[str] = []
    ids = df["patient_id"]
    if (blank := ids == "").any():
        problems.append(f"column 'patient_id': blank at line(s) {_lines(blank)}")
    dup = ids.duplicated(keep=False) & ~blank
    if dup.any():
        problems.append(f"column 'patient_id': duplicate id(s) {_some(set(ids[dup]))} "
                        f"at line(s) {_lines(dup)}")

    event_text = df[EVENT].str.lower()
    event = event_text.map(_EVENT_VALUES)
    if (no_event := event_text == "").any():
        problems.append(f"column '{EVENT}': blank at line(s) {_lines(no_event)}")
    if (bad := (event_text != "") & event.isna()).any():
        problems.append(f"column '{EVENT}': expected 0 or 1, got {_some(set(df[EVENT][bad]))} "
                        f"at line(s) {_lines(bad)}")

    time_text = df[TIME]
    time = _numbers(time_text)
    no_time = time_text == ""
    if (m := no_time & (event == 1)).any():
        problems.append(f"column '{TIME}': event without a follow-up time at line(s) {_lines(m)}")
    if (m := no_time & (event != 1)).any():
        problems.append(f"column '{TIME}': blank at line(s) {_lines(m)}")
    if (m := ~no_time & ~np.isfinite(time)).any():
        problems.append(f"column '{TIME}': not a finite number ({_some(set(time_text[m]))}) "
                        f"at line(s) {_lines(m)}")
    if (m := np.isfinite(time) & (time <= 0)).any():
        problems.append(f"column '{TIME}': must be > 0, got {_some(set(time_text[m]))} "
                        f"at line(s) {_lines(m)}")
    if problems:
        raise CohortDataError(source, problems)
    out = df.copy()
    out[TIME] = time
    out[EVENT] = event.astype("int64")
    return out


def _baseline(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """One row per patient: the lowest ``exam`` (blank last), ties and no ``exam`` by file order."""
    if "exam" not in df.columns:
        return df.drop_duplicates("patient_id", keep="first")
    exam = _numbers(df["exam"])
    bad = (df["exam"] != "") & (exam.isna() | (exam % 1 != 0))
    if bad.any():
        raise CohortDataError(source, [f"column 'exam': not a whole number at line(s) {_lines(bad)}"])
    order = np.lexsort((np.arange(len(df)), exam.fillna(math.inf).to_numpy()))
    return df.iloc[order].drop_duplicates("patient_id", keep="first").sort_index()


def baseline_scores(df: pd.DataFrame, columns: Sequence[str], source: str, *,
                    domain: str | None = None, split: str | None = None) -> pd.DataFrame:
    """Baseline row per patient of one scores table, with ``columns`` parsed as floats.

    Blank scores stay NaN; ``*_prob`` columns must lie in [0, 1]. ``domain`` / ``split``
    keep only matching rows (before the baseline is chosen).
    """
    _require(df, ["patient_id", *columns], source)
    df = df.copy()
    problems: list[str] = []
    if (blank := df["patient_id"] == "").any():
        problems.append(f"column 'patient_id': blank at line(s) {_lines(blank)}")
    for col in columns:
        values = _numbers(df[col])
        if (bad := (df[col] != "") & ~np.isfinite(values)).any():
            problems.append(f"column '{col}': not a finite number at line(s) {_lines(bad)}")
        if col.endswith("_prob") and (out := (values < 0) | (values > 1)).any():
            problems.append(f"column '{col}': probability outside [0, 1] at line(s) {_lines(out)}")
        df[col] = values
    if problems:
        raise CohortDataError(source, problems)
    for name, value in (("domain", domain), ("split", split)):
        if value is not None:
            _require(df, [name], source)
            df = df[df[name].str.lower() == value.lower()]
            if df.empty:
                raise CohortDataError(source, [f"no row with {name} = '{value}'"])
    return _baseline(df, source).reset_index(drop=True)


def merge_scores(tables: Sequence[tuple[str, pd.DataFrame]], columns: Sequence[str]) -> pd.DataFrame:
    """Join per-patient score tables (``(source, table)``) on ``patient_id``.

    Each score column must come from exactly one file; other columns are taken from the
    first file that has them.
    """
    owners = {c: [s for s, t in tables if c in t.columns] for c in columns}
    if clash := {c: s for c, s in owners.items() if len(s) > 1}:
        raise CohortDataError(", ".join(s for s, _ in tables),
                              [f"score column '{c}' is in several files {s}; keep it in one"
                               for c, s in clash.items()])
    merged = tables[0][1]
    for _, table in tables[1:]:
        new = [c for c in table.columns if c == "patient_id" or c not in merged.columns]
        merged = merged.merge(table[new], on="patient_id", how="outer")
    return merged


def encode_covariates(frame: pd.DataFrame, names: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Design columns for ``names`` (NaN = missing) and their names.

    All-numeric columns stay numeric; all-text columns give a 0/1 column ``name=level``
    for each level but the alphabetically first; a mix of numbers and text is an error.
    """
    design: dict[str, pd.Series] = {}
    for name in names:
        col = frame[name]
        if col.dtype.kind == "f":
            design[name] = col
            continue
        text = col.fillna("").astype(str)
        values = _numbers(text)
        words = (text != "") & values.isna()
        if not words.any():
            design[name] = values
            continue
        if values.notna().any():
            raise CohortDataError("covariates", [
                f"covariate '{name}' mixes numbers and text ({_some(set(text[words]))}, e.g. patient(s) "
                f"{_some(frame.loc[words, 'patient_id'])})"])
        levels = sorted(set(text[text != ""]))
        for level in levels[1:] or levels:  # a single level gives a constant column (refused later)
            design[f"{name}={level}"] = (text == level).astype("float64").where(text != "")
    return pd.DataFrame(design, index=frame.index), list(design)


def build_cohort(scores: pd.DataFrame, followup: pd.DataFrame, *, score_columns: Sequence[str],
                 covariates: Sequence[str], followup_source: str = "follow-up",
                 scores_source: str = "scores", allow_missing_followup: bool = False) -> Cohort:
    """Join per-patient scores to follow-up, encode covariates, keep complete cases."""
    notes: list[str] = []
    scored, followed = set(scores["patient_id"]), set(followup["patient_id"])
    common = scored & followed
    if not common:
        raise CohortDataError(f"{scores_source} / {followup_source}", [
            f"no patient_id in common (scores: {_some(scored)}; follow-up: {_some(followed)})"])
    if extra := followed - scored:
        notes.append(f"warning: {len(extra)} patient(s) in {followup_source} have no scores and are "
                     f"not analysed ({_some(extra)})")
    if unfollowed := scored - followed:
        message = (f"{len(unfollowed)} scored patient(s) have no follow-up in {followup_source} "
                   f"({_some(unfollowed)})")
        if not allow_missing_followup:
            raise CohortDataError(followup_source, [
                message + "; pass --allow-missing-followup to analyse only patients with follow-up"])
        notes.append(f"warning: {message}; they are not analysed")

    if absent := [c for c in covariates if c not in followup.columns and c not in scores.columns]:
        raise CohortDataError(f"{scores_source} / {followup_source}",
                              [f"covariate column(s) {absent} in neither file"])
    from_followup = [c for c in covariates if c in followup.columns]
    from_scores = [c for c in covariates if c not in followup.columns]
    joined = followup[["patient_id", TIME, EVENT, *from_followup]].merge(
        scores[["patient_id", *score_columns, *from_scores]], on="patient_id", how="inner")
    design, design_names = encode_covariates(joined, covariates)
    frame = pd.concat([joined[["patient_id", TIME, EVENT, *score_columns]], design], axis=1)

    counts = {"scored_patients": len(scored), "followup_patients": len(followed),
              "matched_patients": len(common)}
    keep = np.ones(len(frame), bool)
    for name in covariates:
        cols = [c for c in design_names if c == name or c.startswith(f"{name}=")]
        missing = frame[cols].isna().any(axis=1).to_numpy()
        counts[f"missing_{name}"] = int(missing.sum())
        keep &= ~missing
    for col in score_columns:
        missing = frame[col].isna().to_numpy()
        counts[f"missing_{col}"] = int(missing.sum())
        keep &= ~missing
    reasons = ", ".join(f"{k[8:]}: {v}" for k, v in counts.items() if k.startswith("missing_") and v)
    if (~keep).any():
        notes.append(f"complete-case analysis: {int((~keep).sum())} matched patient(s) left out "
                     f"for missing values ({reasons})")
    frame = frame[keep].reset_index(drop=True)
    counts["analysed_patients"] = len(frame)
    counts["events"] = int(frame[EVENT].sum())
    if frame.empty:
        problems = [f"no patient left after leaving out missing values ({reasons})"]
    else:
        problems = [f"column '{c}' is constant in the analysed cohort"
                    for c in (*design_names, *score_columns) if frame[c].nunique() < 2]
        if counts["events"] == 0:
            problems.append("no incident fracture in the analysed cohort")
    if problems:
        raise CohortDataError(f"{scores_source} / {followup_source}", problems)
    return Cohort(frame=frame, scores=tuple(score_columns), covariates=tuple(design_names),
                  counts=counts, notes=tuple(notes))


def resolve_score_columns(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The requested score columns, or those of :data:`DEFAULT_SCORES` present."""
    if requested:
        return list(requested)
    found = [c for c in DEFAULT_SCORES if c in available]
    if not found:
        raise CohortDataError("scores", [f"none of the default score columns {list(DEFAULT_SCORES)} "
                                         f"found; pass --scores-columns"])
    return found


def calibration_note(tables: Sequence[tuple[str, pd.DataFrame]], columns: Sequence[str]) -> str:
    """What the probability columns are: calibrated (predict's ``calibration`` column names the
    method), the raw sigmoid of an uncalibrated model, or unknown."""
    if not any(c.endswith("_prob") for c in columns):
        return "scores are logits or other scores, not probabilities"
    methods = {str(m) for _, t in tables if "calibration" in t.columns for m in t["calibration"]} - {""}
    if not methods:
        return ("calibration of the scores unknown (no 'calibration' column): risk categories take the "
                "probabilities as they are")
    if methods == {"none"}:
        return ("warning: the scores come from an uncalibrated model (calibration 'none'): the "
                "probabilities are raw sigmoid outputs, so risk categories may misstate risks; fit one "
                "with python -m vertex_jax.calibrate --workdir RUN and score again")
    return (f"probabilities calibrated on the model's validation split ({', '.join(sorted(methods - {'none'}))})"
            + ("; some rows uncalibrated" if "none" in methods else ""))


def load_cohort(score_paths: Sequence[str | os.PathLike], followup_path: str | os.PathLike, *,
                score_columns: Sequence[str] | None = None, covariates: Sequence[str] = ("age", "sex", "bmi"),
                domain: str | None = None, split: str | None = None,
                allow_missing_followup: bool = False) -> Cohort:
    """Scores (baseline row per patient, files joined) + follow-up -> :class:`Cohort`."""
    if missing := [str(p) for p in (*score_paths, followup_path) if not Path(p).is_file()]:
        raise CohortDataError(", ".join(missing), [f"{p}: file not found" for p in missing])
    raw = [(str(p), read_table(p)) for p in score_paths]
    columns = resolve_score_columns(score_columns, [c for _, t in raw for c in t.columns])
    if absent := [c for c in columns if not any(c in t.columns for _, t in raw)]:
        raise CohortDataError(", ".join(s for s, _ in raw), [f"missing score column(s) {absent}"])
    tables = [(s, baseline_scores(t, [c for c in columns if c in t.columns], s, domain=domain,
                                  split=split)) for s, t in raw]
    cohort = build_cohort(merge_scores(tables, columns), load_followup(followup_path),
                          score_columns=columns, covariates=covariates,
                          followup_source=str(followup_path),
                          scores_source=", ".join(s for s, _ in raw),
                          allow_missing_followup=allow_missing_followup)
    baseline = ("baseline = each patient's row with the lowest 'exam' (blank exam last; first row "
                "in file order on ties or without 'exam')")
    return dataclasses.replace(cohort, notes=(baseline, calibration_note(raw, columns), *cohort.notes),
                               counts={"score_rows": sum(len(t) for _, t in raw), **cohort.counts})

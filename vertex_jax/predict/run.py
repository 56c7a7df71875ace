"""Score a table of images with any backend: read, preprocess, batch, score, collect.

A backend has ``tasks``, ``preprocess`` (:class:`PreprocessConfig`), ``stats``
(:class:`ClinicalStats`), ``name``, ``step`` and ``score(image, clinical, clinical_mask)
-> (probabilities, logits)``; one with the vertebra head also has ``vertebrae`` (its
:class:`~vertex_jax.vertebrae.targets.HeadSpec`) and ``score_vertebrae``, which adds the head's
raw map. Reading and preprocessing are the training code's own
(:mod:`vertex_jax.data.io`, :mod:`vertex_jax.data.preprocess`), run in threads; this
module imports no JAX, so the ONNX backend serves without it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np
import pandas as pd
from scipy.special import expit
from tqdm import tqdm

from vertex_jax.calibrate import Calibration
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.io import ImageReadError, NotAnImageError, read_image
from vertex_jax.data.clinical import CLINICAL
from vertex_jax.data.dicom_ids import COLUMNS as IDENTIFIERS
from vertex_jax.data.input_check import geometry_finding
from vertex_jax.data.preprocess import Geometry, PreprocessConfig, preprocess
from vertex_jax.tasks import TASKS

PREPROCESS_VERSION = "verte-x-1"  # bump when preprocessing changes what the model sees


class Backend(Protocol):
    tasks: tuple[str, ...]
    preprocess: PreprocessConfig
    stats: ClinicalStats
    name: str
    step: int | None
    calibration: Calibration | None  # what made the probabilities score() returns, if anything

    def score(self, image: np.ndarray, clinical: np.ndarray, clinical_mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass
class Prepared:
    """One readable image: its row, canvas and, when asked for, what Grad-CAM needs."""

    row: int
    canvas: np.ndarray
    geometry: Geometry
    original: np.ndarray | None


UNREADABLE, NOT_AN_IMAGE = "unreadable", "not an image"  # the kinds of failure
CONSOLE_LIMIT = 5  # problems listed on the console; the rest are in the listing file
Failure = tuple[int, str, str]  # (row, reason, kind)


def _prepare(path: str, row: int, config: PreprocessConfig, keep_original: bool
             ) -> Prepared | Failure:
    try:
        image = read_image(path)
        canvas, geometry = preprocess(image.pixels, config)
    except ImageReadError as e:
        return row, e.reason, NOT_AN_IMAGE if isinstance(e, NotAnImageError) else UNREADABLE
    except (ValueError, OSError) as e:  # preprocessing refuses, e.g., a blank image
        return row, f"{type(e).__name__}: {e}", UNREADABLE
    return Prepared(row, canvas, geometry, image.pixels if keep_original else None)


def _in_order(df: pd.DataFrame, config: PreprocessConfig, window: int, workers: int,
              keep_original: bool) -> Iterator[Prepared | Failure]:
    """Each row's result in table order, with at most ``window`` rows in flight."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        in_flight: collections.deque = collections.deque()
        for row, path in enumerate(df["path"]):
            in_flight.append(pool.submit(_prepare, path, row, config, keep_original))
            if len(in_flight) >= window:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()


def _prepared_batches(df: pd.DataFrame, config: PreprocessConfig, batch: int, workers: int,
                      keep_original: bool, failures: list[Failure]
                      ) -> Iterator[list[Prepared]]:
    """Batches of readable images in table order; failures are appended as (row, reason, kind)."""
    pending: list[Prepared] = []
    for result in _in_order(df, config, 2 * batch, workers, keep_original):
        if isinstance(result, Prepared):
            pending.append(result)
        else:
            failures.append(result)
        if len(pending) == batch:
            yield pending
            pending = []
    if pending:
        yield pending


def score_table(df: pd.DataFrame, backend: Backend, *, batch: int = 16, workers: int = 4,
                on_batch: Callable[[list[Prepared], np.ndarray, np.ndarray, np.ndarray], Any] | None = None,
                vertebrae: Callable[[list[Prepared], np.ndarray], Any] | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scores, unreadable): one row per readable image in the scores.csv schema, and one
    per unreadable file with the reason. ``vertebrae(items, raw)`` is called after each batch
    with the vertebra head's raw map (a backend with the head), then ``on_batch(items, image,
    clinical, mask)`` (Grad-CAM overlays)."""
    clinical, mask = backend.stats.apply(df)
    failures: list[Failure] = []
    rows, probs, logits, shapes = [], [], [], {}
    bar = tqdm(total=len(df), unit="img", desc="scoring", disable=not progress)
    reported = 0  # failures already counted on the bar
    for items in _prepared_batches(df, backend.preprocess, batch, workers, on_batch is not None,
                                   failures):
        idx = np.array([it.row for it in items])
        image = np.stack([it.canvas for it in items])[..., None]
        if vertebrae is None:
            p, lo = backend.score(image, clinical[idx], mask[idx])
        else:
            p, lo, raw = backend.score_vertebrae(image, clinical[idx], mask[idx])
            vertebrae(items, raw)
        if on_batch is not None:
            on_batch(items, image, clinical[idx], mask[idx])
        rows.append(idx), probs.append(p), logits.append(lo)
        shapes.update((it.row, it.geometry.original) for it in items)
        bar.update(len(items) + len(failures) - reported)
        reported = len(failures)
    bar.update(len(failures) - reported)
    bar.close()
    scores = _scores_frame(df, backend, rows, probs, logits, mask)
    scores["input_check"] = _input_check(df, np.concatenate(rows) if rows else [], shapes)
    return scores, _failures_frame(df, failures)


def _input_check(df: pd.DataFrame, rows, shapes: dict[int, tuple[int, int]]) -> list[str]:
    """Per scored row: the header's findings (collect_inputs) and the image's geometry."""
    header = df["input_check"] if "input_check" in df.columns else pd.Series("", index=df.index)
    out = []
    for row in rows:
        notes = [header.iloc[row]] if header.iloc[row] else []
        if (geometry := geometry_finding(shapes[row], df["domain"].iloc[row])) is not None:
            notes.append(geometry)
        out.append("; ".join(notes))
    return out


def _scores_frame(df: pd.DataFrame, backend: Backend, rows: list, probs: list, logits: list,
                  mask: np.ndarray) -> pd.DataFrame:
    idx = np.concatenate(rows) if rows else np.zeros(0, int)
    ids = [c for c in IDENTIFIERS if c in df.columns]
    out = df.iloc[idx][["image_id", "patient_id", *ids, "path", "domain", "split", "exam"]].copy()
    src = df.iloc[idx]
    out["age"], out["bmi"] = src["age"].to_numpy(), src["bmi"].to_numpy()
    out["sex"] = src["sex"].map({1.0: "F", 0.0: "M"}).fillna("").to_numpy()
    for task in TASKS:
        if src[task].notna().any():
            out[task] = src[task].astype("Int64").array
    p = np.concatenate(probs) if probs else np.zeros((0, len(backend.tasks)))
    lo = np.concatenate(logits) if logits else np.zeros((0, len(backend.tasks)))
    for t, task in enumerate(backend.tasks):
        out[f"{task}_prob"] = p[:, t]
        out[f"{task}_prob_raw"] = expit(lo[:, t].astype(np.float64))
        out[f"{task}_logit"] = lo[:, t]
    cal = backend.calibration
    out["calibration"] = "none" if cal is None else cal.fitted_on.get("method", "calibrated")
    missing = mask[idx] == 0
    out["clinical_missing"] = [";".join(c for c, m in zip(CLINICAL, row) if m) for row in missing]
    out["model"], out["model_step"] = backend.name, backend.step
    out["preprocess_version"] = PREPROCESS_VERSION
    return out.reset_index(drop=True)


def _failures_frame(df: pd.DataFrame, failures: list[Failure]) -> pd.DataFrame:
    rows = sorted(failures)
    return pd.DataFrame({"image_id": [df["image_id"].iloc[i] for i, _, _ in rows],
                         "path": [df["path"].iloc[i] for i, _, _ in rows],
                         "kind": [k for _, _, k in rows],
                         "reason": [r for _, r, _ in rows]})


def _listed(lines: list[str], frame: pd.DataFrame, what: str, listing: Path) -> None:
    """``what`` and the first :data:`CONSOLE_LIMIT` rows of ``frame``, then how many more."""
    lines.append(f"{len(frame)} {what}, listed with the reason in {listing}:")
    lines += [f"  {r.path}: {r.reason}" for r in frame.head(CONSOLE_LIMIT).itertuples()]
    if len(frame) > CONSOLE_LIMIT:
        lines.append(f"  … and {len(frame) - CONSOLE_LIMIT} more (see {listing})")


def account(out: Path, scored: int, failures: pd.DataFrame, skipped: pd.DataFrame) -> list[str]:
    """Write ``<out>_unreadable.csv`` / ``<out>_skipped.csv`` (when not empty) and return the
    summary: counts that add up to every file looked at, then the files not scored."""
    kinds = failures["kind"].value_counts()
    unreadable, not_image = int(kinds.get(UNREADABLE, 0)), int(kinds.get(NOT_AN_IMAGE, 0))
    total = scored + len(failures) + len(skipped)
    lines = [f"{total} file(s) looked at: {scored} scored, {unreadable} unreadable, {not_image} not an "
             f"image, {len(skipped)} skipped by extension"]
    listings = {name: out.with_name(f"{out.stem}_{name}.csv") for name in ("unreadable", "skipped")}
    for name, frame in (("unreadable", failures), ("skipped", skipped)):
        listings[name].unlink(missing_ok=True)  # a previous run's list would mislead
        if len(frame):
            frame.to_csv(listings[name], index=False)
    for kind, what in ((UNREADABLE, "unreadable file(s)"), (NOT_AN_IMAGE, "file(s) not an image")):
        if len(rows := failures[failures["kind"] == kind]):
            _listed(lines, rows, what, listings["unreadable"])
    if len(skipped):
        _listed(lines, skipped, "file(s) skipped (not an image by extension, name or content)",
                listings["skipped"])
    return lines

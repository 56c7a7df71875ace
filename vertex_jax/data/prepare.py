"""From a run's data config to ready pipelines: manifest → splits → cache → grain.

With no manifest configured, a synthetic cohort is generated once (under ``data_dir``)
and used, so every command works out of the box.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np
import pandas as pd

from vertex_jax.data.cache import Cache, build_cache
from vertex_jax.data.manifest import load_manifest
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.pipeline import eval_dataset, train_dataset
from vertex_jax.data.preprocess import PreprocessConfig
from vertex_jax.data.splits import load_or_create_splits
from vertex_jax.errors import InputDataError
from vertex_jax import run_layout


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """A validated, split, cached cohort and the statistics fitted on its training split."""

    frame: pd.DataFrame  # validated manifest rows of the configured domain, with ``split``
    cache: Cache
    stats: ClinicalStats
    tasks: tuple[str, ...]
    manifest: Path

    def split(self, name: str) -> pd.DataFrame:
        rows = self.frame[self.frame["split"] == name].reset_index(drop=True)
        if rows.empty:
            raise InputDataError(f"split {name!r} is empty in {self.manifest}")
        return rows

    def train(self, *, global_batch: int, seed: int, split: str = "train", workers: int = 0,
              process_index: int = 0, process_count: int = 1,
              extra: Mapping[str, np.ndarray] | None = None) -> grain.IterDataset:
        """Training batches of ``split``; ``extra``: more per-example arrays (one row per row
        of ``self.split(split)``), see :func:`train_dataset`."""
        return train_dataset(self.cache, self.split(split), tasks=self.tasks, stats=self.stats,
                             global_batch=global_batch, seed=seed, workers=workers,
                             process_index=process_index, process_count=process_count, extra=extra)

    def evaluate(self, split: str, *, global_batch: int, workers: int = 0, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
        return eval_dataset(self.cache, self.split(split), tasks=self.tasks, stats=self.stats,
                            global_batch=global_batch, workers=workers,
                            process_index=process_index, process_count=process_count)


def _token(value: Any) -> str:
    """A config value as a path token, the same for a tuple and its JSON list."""
    if isinstance(value, (list, tuple)):
        return "_".join(map(str, value))
    return str(value)


def synthetic_manifest_path(data: Any, data_dir: Path) -> Path:
    """Where the configured synthetic cohort lives (its manifest is written last)."""
    syn = data.synthetic
    name = f"synthetic-{data.domain}-n{syn.num_patients}-s{syn.scale:g}-seed{syn.seed}"
    options = dict(syn.options)
    if options:  # difficulty knobs (vertex_jax.synthetic.cohort.CohortConfig) name the cohort too
        name += "-" + "-".join(f"{k}{_token(v)}" for k, v in sorted(options.items()))
    return data_dir / name / "manifest.csv"


def ensure_synthetic(data: Any, data_dir: Path) -> Path:
    """Generate the configured synthetic cohort once; return its manifest."""
    from vertex_jax.synthetic.cohort import generate_cohort

    manifest = synthetic_manifest_path(data, data_dir)
    if not manifest.exists():
        print(f"generating the synthetic cohort in {manifest.parent}", flush=True)
        syn = data.synthetic
        generate_cohort(manifest.parent, num_patients=syn.num_patients, domain=data.domain,
                        scale=syn.scale, seed=syn.seed, workers=data.workers or None,
                        **dict(syn.options))
    return manifest


def cohort_counts(frame: pd.DataFrame, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per split of ``frame`` (validated manifest rows with ``split``): images, patients and,
    per task, the labelled images and their positives."""
    out: dict[str, dict[str, Any]] = {}
    for split, rows in frame.groupby("split", sort=True):
        entry: dict[str, Any] = {"images": int(len(rows)), "patients": int(rows["patient_id"].nunique())}
        for task in tasks:
            labels = pd.to_numeric(rows[task], errors="coerce") if task in rows else pd.Series(dtype=float)
            entry[task] = {"labelled": int(labels.notna().sum()), "positives": int((labels == 1).sum())}
        out[str(split)] = entry
    return out


def generated_cohort(manifest: Path) -> dict[str, Any] | None:
    """The settings of the synthetic generator that wrote ``manifest`` (its ``truth.json``
    beside it, as ``python -m vertex_jax.synthetic`` writes it), None for other data."""
    truth = manifest.parent / "truth.json"
    try:
        saved = json.loads(truth.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not {"pvf_model", "t_score_model"} <= saved.keys():
        return None
    return {k: saved.get(k) for k in ("num_patients", "num_images", "scale", "seed", "version")}


def describe_training_data(data: Any, prepared: "PreparedData") -> dict[str, Any]:
    """What the run trained on, for its model card: the manifest, whether it is synthetic
    (the built-in cohort when ``data.manifest`` is empty, or a manifest the synthetic
    generator wrote) and the counts of :func:`cohort_counts`."""
    generated = None if data.manifest else {**data.synthetic.to_dict(), "built_in": True}
    generated = generated or generated_cohort(prepared.manifest)
    return {"manifest": str(prepared.manifest), "synthetic": generated is not None, "generator": generated,
            "domain": data.domain, "train_split": data.train_split, "val_split": data.val_split,
            "splits": cohort_counts(prepared.frame, prepared.tasks)}


def prepare(data: Any, workdir: str | Path, *, tasks: tuple[str, ...],
            barrier: Callable[[str], None] = lambda name: None, is_leader: bool = True
            ) -> PreparedData:
    """Resolve, validate, split and cache the data of a run's ``config.data``.

    In multi-process runs on a shared filesystem the leader does the writing and the
    others wait at ``barrier`` before reading the same files.
    """
    workdir = Path(workdir)
    data_dir = run_layout.data_dir(workdir, data.data_dir)
    if is_leader and not data.manifest:
        ensure_synthetic(data, data_dir)
    barrier("data:manifest")
    manifest = Path(data.manifest) if data.manifest else synthetic_manifest_path(data, data_dir)
    frame = load_manifest(manifest, clinical_from_dicom=data.clinical_from_dicom)
    frame = frame[frame["domain"] == data.domain].reset_index(drop=True)
    if frame.empty:
        raise InputDataError(f"{manifest}: no rows with domain {data.domain!r}")
    fractions = dict(data.split_fractions)
    if is_leader:
        load_or_create_splits(frame, run_layout.splits_path(workdir), fractions, seed=data.split_seed)
    barrier("data:splits")
    frame["split"] = load_or_create_splits(frame, run_layout.splits_path(workdir), fractions,
                                           seed=data.split_seed).to_numpy()
    config = PreprocessConfig(canvas=tuple(data.canvas), border_crop=data.border_crop,
                              out_dtype=data.cache_dtype)
    cache_dir = Path(data.cache_dir) if data.cache_dir else data_dir / "cache"
    if is_leader:
        build_cache(frame, cache_dir, config, workers=data.workers or None,
                    skip_errors=data.skip_unreadable)
    barrier("data:cache")
    cache = build_cache(frame, cache_dir, config, skip_errors=data.skip_unreadable, progress=False)
    if len(cache.failures):
        skipped = set(cache.failures["image_id"])
        logging.warning("skipping %d unreadable image(s), listed in %s", len(skipped),
                        cache.root / "unreadable.csv")
        frame = frame[~frame["image_id"].isin(skipped)].reset_index(drop=True)
    stats = ClinicalStats.fit(frame[frame["split"] == data.train_split])
    return PreparedData(frame, cache, stats, tuple(tasks), manifest)


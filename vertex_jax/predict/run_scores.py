"""Scores of a trained run: its own splits (``evaluate --workdir``, ``calibrate``) or any
manifest (``validate``, ``calibrate --manifest``).

Loads the run's best checkpoint (or the step given), reads the manifest (for the run's own
splits: the one it trained on, with its saved splits, both through :mod:`vertex_jax.runs`)
and scores it with the JAX backend of ``predict``. An image that cannot be read stops it:
these scores feed statistics, which must not quietly lose cases. Imports JAX only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from vertex_jax.errors import InputDataError


def score_run(workdir: str | Path, splits: Sequence[str], *, checkpoint: str | Path | None = None,
              batch: int = 32, progress: bool = True) -> pd.DataFrame:
    """scores.csv rows for every image of ``splits`` in the run at ``workdir``."""
    return score_run_with_vertebrae(workdir, splits, checkpoint=checkpoint, batch=batch,
                                    progress=progress)[0]


def score_run_with_vertebrae(workdir: str | Path, splits: Sequence[str], *,
                             checkpoint: str | Path | None = None, batch: int = 32,
                             progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """:func:`score_run`'s rows and, for a model with the vertebra head, the rows of
    ``<out>_vertebrae.csv`` for the same images (None without the head)."""
    from vertex_jax import runs

    workdir = Path(workdir)
    backend, table = _backend_and_table(checkpoint or workdir, runs.run_manifest(workdir))
    saved = runs.read_splits(workdir)
    table = table.drop(columns="split").merge(saved[["image_id", "split"]], on="image_id")
    table = table[table["split"].isin(list(splits))].reset_index(drop=True)
    if table.empty:
        raise InputDataError(f"no images of split(s) {list(splits)} in {runs.splits_path(workdir)}")
    return _scores(table, backend, batch, progress, vertebrae=True)


def score_manifest(checkpoint: str | Path, manifest: str | Path, *, batch: int = 32,
                   progress: bool = True) -> pd.DataFrame:
    """scores.csv rows for every image of ``manifest`` of the model's domain, by the run or
    step directory ``checkpoint``."""
    backend, table = _backend_and_table(checkpoint, manifest)
    if table.empty:
        raise InputDataError(f"no images of the model's domain in {manifest}")
    return _scores(table.reset_index(drop=True), backend, batch, progress)


def _backend_and_table(checkpoint: str | Path, manifest: str | Path):
    from vertex_jax.predict.inputs import load_inputs
    from vertex_jax.predict.jax_backend import JaxBackend

    backend = JaxBackend(checkpoint)
    domain = backend.trained.card.get("domain", "xray")
    table = load_inputs(manifest, domain)
    return backend, table[table["domain"] == domain]


def _scores(table: pd.DataFrame, backend, batch: int, progress: bool, *, vertebrae: bool = False):
    """The scores; with ``vertebrae`` (scores, vertebra rows or None)."""
    from vertex_jax.predict.run import score_table
    from vertex_jax.predict.vertebra_table import VertebraTable

    found = VertebraTable.for_backend(backend, list(table["image_id"])) if vertebrae else None
    scores, unreadable = score_table(table, backend, batch=batch, progress=progress, vertebrae=found)
    if len(unreadable):
        raise InputDataError(f"{len(unreadable)} image(s) could not be read, e.g. "
                             f"{unreadable['path'].iloc[0]}: {unreadable['reason'].iloc[0]}")
    if not vertebrae:
        return scores
    return scores, None if found is None else found.frame(scores)

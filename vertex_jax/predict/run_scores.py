"""Scores of a training run's own splits, for ``evaluate --workdir`` and ``calibrate``.

Loads the run's best checkpoint, reads the manifest it trained on with the run's saved
splits (both through :mod:`vertex_jax.runs`), and scores the requested splits with the
JAX backend of ``predict``. Imports JAX only when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from vertex_jax.errors import InputDataError


def score_run(workdir: str | Path, splits: Sequence[str], *, checkpoint: str | Path | None = None,
              batch: int = 32, progress: bool = True) -> pd.DataFrame:
    """scores.csv rows for every image of ``splits`` in the run at ``workdir``."""
    from vertex_jax import runs
    from vertex_jax.predict.inputs import load_inputs
    from vertex_jax.predict.jax_backend import JaxBackend
    from vertex_jax.predict.run import score_table

    workdir = Path(workdir)
    backend = JaxBackend(checkpoint or workdir)
    domain = backend.trained.card.get("domain", "xray")
    table = load_inputs(runs.run_manifest(workdir), domain)
    table = table[table["domain"] == domain]
    saved = runs.read_splits(workdir)
    table = table.drop(columns="split").merge(saved[["image_id", "split"]], on="image_id")
    table = table[table["split"].isin(list(splits))].reset_index(drop=True)
    if table.empty:
        raise InputDataError(f"no images of split(s) {list(splits)} in {runs.splits_path(workdir)}")
    scores, unreadable = score_table(table, backend, batch=batch, progress=progress)
    if len(unreadable):
        raise InputDataError(f"{len(unreadable)} image(s) of the run could not be read, e.g. "
                         f"{unreadable['path'].iloc[0]}: {unreadable['reason'].iloc[0]}")
    return scores

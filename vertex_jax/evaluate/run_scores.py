"""Scores of a training run's own splits, for ``evaluate --workdir``.

Loads the run's best checkpoint, reads the manifest it trained on (``config.json``) with
the run's saved ``splits.csv``, and scores the requested splits with the JAX backend of
``predict``. Imports JAX only when called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from vertex_jax.data.prepare import synthetic_manifest_path


def run_manifest(workdir: Path) -> Path:
    """The manifest a run trained on (the synthetic cohort's when none was configured)."""
    from ml_collections import ConfigDict

    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{workdir} is not a training run (no config.json)")
    data = ConfigDict(json.loads(config_path.read_text())).data
    if data.manifest:
        return Path(data.manifest)
    data_dir = Path(data.data_dir) if data.data_dir else workdir / "data"
    return synthetic_manifest_path(data, data_dir)


def score_run(workdir: str | Path, splits: Sequence[str], *, checkpoint: str | Path | None = None,
              batch: int = 32, progress: bool = True) -> pd.DataFrame:
    """scores.csv rows for every image of ``splits`` in the run at ``workdir``."""
    from vertex_jax.predict.inputs import load_inputs
    from vertex_jax.predict.jax_backend import JaxBackend
    from vertex_jax.predict.run import score_table

    workdir = Path(workdir)
    backend = JaxBackend(checkpoint or workdir)
    table = load_inputs(run_manifest(workdir), backend.trained.card.get("domain", "xray"))
    table = table[table["domain"] == backend.trained.card.get("domain", "xray")]
    saved = pd.read_csv(workdir / "splits.csv", dtype=str)
    table = table.drop(columns="split").merge(saved[["image_id", "split"]], on="image_id")
    table = table[table["split"].isin(list(splits))].reset_index(drop=True)
    if table.empty:
        raise ValueError(f"no images of split(s) {list(splits)} in {workdir / 'splits.csv'}")
    scores, unreadable = score_table(table, backend, batch=batch, progress=progress)
    if len(unreadable):
        raise ValueError(f"{len(unreadable)} image(s) of the run could not be read, e.g. "
                         f"{unreadable['path'].iloc[0]}: {unreadable['reason'].iloc[0]}")
    return scores

"""A training run's directory: the names of what is in it. Imports nothing of the project,
so every layer can use it (data prepares ``splits.csv`` and ``data/``; :mod:`vertex_jax.runs`
reads a run back).

    <workdir>/
      config.json           the run's configuration, written when training starts
      splits.csv            the patient-level splits it drew (or reused)
      data/                 the data_dir when none is configured: synthetic cohort, image cache
      model_card.json       tasks, clinical statistics, preprocessing, training data, calibration
                              (also in every step)
      model_card.md         the clinical model card (vertex_jax.model_card), rewritten by training,
                              evaluate and calibrate
      summary.json          how the run ended and its best checkpoint
      checkpoints/<step>/   one Orbax step directory per save, with the items
                              state     model + optimizer arrays
                              data      the grain iterator
                              progress  step, best metric, history (JSON)
                              config    the configuration again (JSON)
                              card      the model card again (JSON)
      evaluation/           ``python -m vertex_jax.evaluate --workdir`` (report.json, thresholds.json)
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
SPLITS_FILE = "splits.csv"
DATA = "data"
CARD_FILE = "model_card.json"
CARD_MARKDOWN_FILE = "model_card.md"
SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"
EVALUATION = "evaluation"
THRESHOLDS_FILE = "thresholds.json"
REPORT_FILE = "report.json"


def splits_path(workdir: str | Path) -> Path:
    """``<workdir>/splits.csv``."""
    return Path(workdir) / SPLITS_FILE


def data_dir(workdir: str | Path, configured: str | None) -> Path:
    """The configured ``data.data_dir``, else ``<workdir>/data``."""
    return Path(configured) if configured else Path(workdir) / DATA


def evaluation_dir(workdir: str | Path) -> Path:
    """``<workdir>/evaluation``: the evaluation report of the run and its thresholds."""
    return Path(workdir) / EVALUATION

"""Fit a run's calibration and store it in its model card.

Training calls :func:`calibrate_outputs` on its best checkpoint's validation outputs when it
finishes; ``python -m vertex_jax.calibrate`` (its ``calibrate_run``) refits a finished
run (another method, another split). Either way the calibration goes into the step's
``card`` item (so a copied step directory carries it) and the run's ``model_card.json``
(and ``model_card.md``, rendered again); the arrays are never touched.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from collections.abc import Sequence
from typing import Any
from pathlib import Path

import numpy as np

from vertex_jax import runs
from vertex_jax.calibrate.maps import Calibration, CalibrationError, fit_calibration
from vertex_jax.files import write_text
from vertex_jax.model_card import write_run_card

TEST_SPLIT = "test"


def check_split(split: str, train_split: str = "train") -> None:
    """Calibration is fitted on held-out validation cases: never on the test split."""
    if split in (TEST_SPLIT, "all"):
        raise CalibrationError(f"refusing to fit the calibration on split '{split}': it must stay untouched "
                               "for evaluation; fit on the validation split (--split val)")
    if split == train_split:
        logging.warning("fitting the calibration on the training split: the model has seen these cases, so "
                        "the calibrated probabilities will still be overconfident")


def calibrate_outputs(method: str, logits: np.ndarray, labels: np.ndarray, label_mask: np.ndarray,
                      tasks: Sequence[str], *, split: str, domain: str, step: int,
                      previous: Calibration | None = None, **fitted_on: Any) -> Calibration | None:
    """Fit ``method`` per task (``intercept``: update ``previous``); None (with the reasons
    logged) when no task could be fitted. ``fitted_on`` adds to where it was fitted (a
    site's manifest, its cases' keys)."""
    calibration, skipped = fit_calibration(method, logits, labels, label_mask, tasks,
                                           {"split": split, "domain": domain, "step": int(step), **fitted_on},
                                           previous)
    for task, why in skipped.items():
        logging.warning("calibration of %s not fitted (%s); its probabilities stay uncalibrated", task, why)
    return calibration if calibration.maps else None


def store(step_dir: str | Path, calibration: Calibration | None) -> None:
    """Write ``calibration`` (None: remove it) into the step's card and the run's model card
    (``model_card.json`` and ``model_card.md``); the calibration it replaces is kept in the
    card's ``calibration_history`` (oldest first)."""
    step_dir = Path(step_dir)
    card = runs.read_json_item(step_dir, "card")
    if card.get("calibration"):
        replaced = {**card["calibration"], "replaced_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        card["calibration_history"] = [*card.get("calibration_history", []), replaced]
    card["calibration"] = None if calibration is None else calibration.to_dict()
    runs.write_json_item(step_dir, "card", card)
    workdir = runs.workdir_of(step_dir)
    run_card = runs.card_path(workdir)
    if run_card.is_file():
        write_text(run_card, json.dumps(card, indent=2))
        write_run_card(workdir)  # model_card.md: the new calibration

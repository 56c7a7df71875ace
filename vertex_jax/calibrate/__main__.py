"""Refit a finished run's calibration on its validation split.

    python -m vertex_jax.calibrate --workdir RUN [--method temperature|platt|isotonic] [--split val]
        [--checkpoint STEP_DIR]

The run's best checkpoint (or ``--checkpoint``) scores the split; the fitted maps replace
the calibration in that step's card and in ``RUN/model_card.json`` (arrays untouched).
``--method none`` removes it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vertex_jax.calibrate.maps import METHODS
from vertex_jax.cli import add_verbosity, user_errors


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="training run")
    p.add_argument("--method", default="temperature", choices=(*METHODS, "none"))
    p.add_argument("--split", default="val", help="split to fit on (default val; never test)")
    p.add_argument("--checkpoint", help="step directory to calibrate (default: the run's best)")
    p.add_argument("--no-progress", action="store_true")
    return add_verbosity(p)


def calibrate_run(workdir: str | Path, method: str = "temperature", split: str = "val", *,
                  checkpoint: str | Path | None = None, progress: bool = True,
                  log: Callable[[str], None] = print):
    """Score ``split`` of the run with its best checkpoint (or ``checkpoint``), fit ``method``
    per task on the logits, store it; returns the calibration (imports JAX when called)."""
    import numpy as np

    from vertex_jax import runs
    from vertex_jax.calibrate.maps import CalibrationError
    from vertex_jax.calibrate.run import calibrate_outputs, check_split, store
    from vertex_jax.predict.run_scores import score_run

    config = runs.read_config(workdir)
    check_split(split, config.data.train_split)
    step_dir = runs.resolve_step_dir(checkpoint or workdir)
    card = runs.read_json_item(step_dir, "card")
    tasks = tuple(card["tasks"])
    scores = score_run(workdir, [split], checkpoint=step_dir, progress=progress)
    labels = np.stack([scores[t].to_numpy(dtype=float, na_value=np.nan) for t in tasks], axis=1)
    logits = np.stack([scores[f"{t}_logit"].to_numpy(float) for t in tasks], axis=1)
    calibration = calibrate_outputs(method, logits, np.nan_to_num(labels), ~np.isnan(labels), tasks,
                                    split=split, domain=card.get("domain", "xray"), step=int(step_dir.name))
    if calibration is None:
        raise CalibrationError(f"no task of {step_dir} could be calibrated on split '{split}' (see the warnings)")
    store(step_dir, calibration)
    log(f"calibrated {step_dir} on {len(scores)} '{split}' image(s): {calibration.describe()}")
    return calibration


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    """The command; user errors (a refused split, no checkpoint, nothing to fit) print one
    block and return 2 (:mod:`vertex_jax.cli`)."""
    args = parser().parse_args(argv)
    from vertex_jax import runs
    from vertex_jax.calibrate.run import store

    if args.method == "none":
        step_dir = runs.resolve_step_dir(args.checkpoint or args.workdir)
        store(step_dir, None)
        print(f"removed the calibration of {step_dir}")
    else:
        calibrate_run(args.workdir, args.method, args.split, checkpoint=args.checkpoint,
                      progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())

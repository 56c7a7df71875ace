"""Refit a finished run's calibration: on its validation split, or on a site's own cases.

    python -m vertex_jax.calibrate --workdir RUN [--method temperature|platt|isotonic] [--split val]
        [--checkpoint STEP_DIR]
    python -m vertex_jax.calibrate --workdir RUN --manifest LOCAL.csv [--n 200] [--seed 0]

The run's best checkpoint (or ``--checkpoint``) scores the split, or ``--n`` cases of a
labelled local manifest drawn by patient (site recalibration: the model's ranking is kept,
its probabilities are made to match the site's risks); the fitted maps replace the
calibration in that step's card and in ``RUN/model_card.json``, the replaced one is kept
in the card's ``calibration_history``, and the arrays are untouched. ``--method none``
removes it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vertex_jax.calibrate.maps import METHODS, UPDATES
from vertex_jax.cli import add_verbosity, user_errors


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="training run")
    p.add_argument("--method", default="temperature", choices=(*METHODS, *UPDATES, "none"),
                   help="map to fit; 'intercept' refits the current map's intercept only (small site "
                        "samples); 'none' removes the calibration (default temperature)")
    p.add_argument("--split", default="val", help="split to fit on (default val; never test)")
    p.add_argument("--manifest", help="fit on a labelled local manifest instead of a split (site recalibration)")
    p.add_argument("--n", type=int, help="with --manifest: cases to draw from it, by patient (default all)")
    p.add_argument("--seed", type=int, default=0, help="with --manifest: the draw's seed")
    p.add_argument("--checkpoint", help="step directory to calibrate (default: the run's best)")
    p.add_argument("--no-progress", action="store_true")
    return add_verbosity(p)


def calibrate_run(workdir: str | Path, method: str = "temperature", split: str = "val", *,
                  checkpoint: str | Path | None = None, progress: bool = True,
                  log: Callable[[str], None] = print):
    """Score ``split`` of the run with its best checkpoint (or ``checkpoint``), fit ``method``
    per task on the logits, store it; returns the calibration (imports JAX when called)."""
    from vertex_jax import runs
    from vertex_jax.calibrate.run import check_split
    from vertex_jax.predict.run_scores import score_run

    config = runs.read_config(workdir)
    check_split(split, config.data.train_split)
    step_dir = runs.resolve_step_dir(checkpoint or workdir)
    scores = score_run(workdir, [split], checkpoint=step_dir, progress=progress)
    return _fit_and_store(step_dir, scores, method, {"split": split}, f"'{split}'", log)


def calibrate_site(workdir: str | Path, manifest: str | Path, method: str = "temperature", *,
                   n: int | None = None, seed: int = 0, checkpoint: str | Path | None = None,
                   progress: bool = True, log: Callable[[str], None] = print):
    """Fit ``method`` on ``n`` labelled cases of a site's ``manifest`` (all when None), drawn
    by patient; the fitted cases' hashed ids go into the card (:mod:`vertex_jax.calibrate.cases`)."""
    from vertex_jax import runs
    from vertex_jax.calibrate.cases import KEY, case_keys, draw_local
    from vertex_jax.errors import ConfigError
    from vertex_jax.predict.run_scores import score_manifest

    if n is not None and n < 2:
        raise ConfigError(f"--n must be at least 2, got {n}")
    step_dir = runs.resolve_step_dir(checkpoint or workdir)
    scores = score_manifest(step_dir, manifest, progress=progress)
    scores = scores[draw_local(scores["patient_id"], n or len(scores), seed)].reset_index(drop=True)
    fitted_on = {"split": "site", "manifest": str(manifest), "seed": seed, KEY: case_keys(scores["image_id"])}
    return _fit_and_store(step_dir, scores, method, fitted_on, f"site sample of {manifest}", log)


def _fit_and_store(step_dir: Path, scores, method: str, fitted_on: dict, what: str, log: Callable[[str], None]):
    """Fit ``method`` per task on the scores' logits and labels, store it in ``step_dir``."""
    import numpy as np

    from vertex_jax import runs
    from vertex_jax.calibrate.maps import Calibration, CalibrationError
    from vertex_jax.calibrate.run import calibrate_outputs, store

    card = runs.read_json_item(step_dir, "card")
    tasks = tuple(card["tasks"])
    labels = np.stack([scores[t].to_numpy(dtype=float, na_value=np.nan) if t in scores else
                       np.full(len(scores), np.nan) for t in tasks], axis=1)
    logits = np.stack([scores[f"{t}_logit"].to_numpy(float) for t in tasks], axis=1)
    calibration = calibrate_outputs(method, logits, np.nan_to_num(labels), ~np.isnan(labels), tasks,
                                    domain=card.get("domain", "xray"), step=int(step_dir.name),
                                    previous=Calibration.from_card(card), **fitted_on)
    if calibration is None:
        raise CalibrationError(f"no task of {step_dir} could be calibrated on the {what} (see the warnings)")
    store(step_dir, calibration)
    log(f"calibrated {step_dir} on {len(scores)} image(s) of the {what}: {calibration.describe()}")
    _stale_thresholds_note(step_dir, log)
    return calibration


def _stale_thresholds_note(step_dir: Path, log: Callable[[str], None]) -> None:
    """Thresholds are probabilities: those the run's evaluation chose belong to the replaced map."""
    from vertex_jax import runs

    chosen = runs.thresholds_path(runs.workdir_of(step_dir))
    if chosen.is_file():
        log(f"note: {chosen} was chosen on the previous probabilities; choose them again with "
            f"python -m vertex_jax.evaluate --workdir {runs.workdir_of(step_dir)}")


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    """The command; user errors (a refused split, no checkpoint, nothing to fit) print one
    block and return 2 (:mod:`vertex_jax.cli`)."""
    p = parser()
    args = p.parse_args(argv)
    if args.n is not None and not args.manifest:
        p.error("--n goes with --manifest")
    from vertex_jax import runs
    from vertex_jax.calibrate.run import store

    if args.method == "none":
        step_dir = runs.resolve_step_dir(args.checkpoint or args.workdir)
        store(step_dir, None)
        print(f"removed the calibration of {step_dir}")
        _stale_thresholds_note(step_dir, print)
    elif args.manifest:
        calibrate_site(args.workdir, args.manifest, args.method, n=args.n, seed=args.seed,
                       checkpoint=args.checkpoint, progress=not args.no_progress)
    else:
        calibrate_run(args.workdir, args.method, args.split, checkpoint=args.checkpoint,
                      progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())

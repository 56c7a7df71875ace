"""Write the clinical evaluation report (report.html, report.json, figures) for a score table.

    python -m vertex_jax.evaluate --scores scores.csv --out DIR [--split test] [--threshold-split val]
        [--compare other_scores.csv | --compare-columns pvf_prob,pvf_prob_imageonly] [--label A --label B]
    python -m vertex_jax.evaluate --workdir RUN [--out DIR]   # score the run's splits first

With ``--workdir`` the run's best checkpoint scores its threshold and evaluation splits
(default output ``RUN/evaluation``; ``--compare-workdir`` scores a second run the same way).
A report written into a run's ``evaluation/`` folder also rewrites the run's ``model_card.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.errors import ConfigError
from vertex_jax.evaluate.report import build_report, format_summary
from vertex_jax.evaluate.table import read_scores
from vertex_jax.model_card import run_of_evaluation, write_run_card
from vertex_jax.run_layout import evaluation_dir

VERTEBRAE_FILE = "scores_vertebrae.csv"  # beside the report's scores.csv, as predict names it


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _pair(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"expected two column names A,B, got {text!r}")
    return parts[0], parts[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.evaluate", description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--scores", help="per-case score table (scores.csv format)")
    source.add_argument("--workdir", help="training run: score its splits with its best checkpoint")
    p.add_argument("--compare-workdir", help="second training run, scored like --workdir")
    p.add_argument("--out", help="output folder (default RUN/evaluation with --workdir)")
    p.add_argument("--split", default="test", help="split to evaluate; 'all' = every row (default test)")
    p.add_argument("--threshold-split", default="val", help="split to choose thresholds on (default val)")
    p.add_argument("--thresholds", metavar="JSON", help="fixed thresholds (thresholds.json format) instead")
    p.add_argument("--thresholds-on-eval", action="store_true",
                   help="if the threshold split is missing or overlaps, choose thresholds on the evaluated "
                        "cases (optimistic; flagged in the report)")
    p.add_argument("--tasks", type=lambda s: [t.strip() for t in s.split(",")],
                   help="comma-separated tasks (default: every task with labels and probabilities)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--compare", metavar="CSV", help="second model's score table, joined on image_id")
    group.add_argument("--compare-columns", metavar="A,B", type=_pair, action="append",
                       help="two probability columns of the same table (repeat for another task)")
    p.add_argument("--vertebrae", metavar="CSV",
                   help="the vertebra table predict wrote beside --scores (<out>_vertebrae.csv): adds the "
                        "per-vertebra section (with --workdir: the run's own, when its model has the head)")
    p.add_argument("--annotations", metavar="FILE",
                   help="vertebra annotations (annotations.json or the per-vertebra CSV, docs/vertebrae.md) "
                        "for the per-vertebra section (with --workdir: default the run's own)")
    p.add_argument("--label", action="append", help="model name (twice when comparing)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--age-bands", type=_floats, default=(60, 70, 80), help="age cut points (default 60,70,80)")
    p.add_argument("--bins", type=int, default=10, help="reliability diagram bins")
    p.add_argument("--title", default="")
    return add_verbosity(p)


def load_scores(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The score table to evaluate and the vertebra table (None without one). With
    ``--workdir`` both are scored now, and ``args.compare`` is set to the second run's scores
    when ``--compare-workdir`` is given."""
    if args.scores:
        return read_scores(args.scores), (pd.read_csv(args.vertebrae) if args.vertebrae else None)
    from vertex_jax.predict.run_scores import score_run, score_run_with_vertebrae

    splits = {args.split, args.threshold_split} - {"all"}
    if args.compare_workdir:
        args.compare = score_run(args.compare_workdir, sorted(splits))
    return score_run_with_vertebrae(args.workdir, sorted(splits))


def annotations_file(args: argparse.Namespace) -> Path | None:
    """``--annotations``, else (``--workdir``) the annotations the run trained with, else None."""
    if args.annotations or not args.workdir:
        return Path(args.annotations) if args.annotations else None
    from vertex_jax import runs
    from vertex_jax.train.vertebra_data import annotations_path

    return annotations_path(runs.read_config(args.workdir).data, runs.run_manifest(args.workdir))


def vertebra_section(args: argparse.Namespace, scores: pd.DataFrame, found: pd.DataFrame | None) -> dict | None:
    """The per-vertebra section, when there is a vertebra table; an error when the
    annotations to judge it are missing."""
    if found is None:
        return None
    path = annotations_file(args)
    if path is None:
        raise ConfigError("a vertebra table needs the annotations to evaluate it against",
                          todo="pass --annotations FILE (annotations.json or the per-vertebra CSV)")
    from vertex_jax.vertebrae.annotations import read_annotations
    from vertex_jax.vertebrae.evaluation import vertebra_section as section

    return section(found, read_annotations(path), scores, split=args.split, bootstrap=args.bootstrap,
                   seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.out is None:
        if not args.workdir:
            p.error("--out is required with --scores")
        args.out = str(evaluation_dir(args.workdir))
    if args.compare_workdir and (not args.workdir or args.compare or args.compare_columns):
        p.error("--compare-workdir goes with --workdir and no other comparison")
    if args.vertebrae and not args.scores:
        p.error("--vertebrae goes with --scores (with --workdir the run's model gives its own)")
    scores, found = load_scores(args)
    report = build_report(
        scores, args.out, tasks=args.tasks, threshold_split=args.threshold_split,
        eval_split=args.split, compare=args.compare, compare_columns=args.compare_columns,
        labels=args.label, thresholds=args.thresholds, thresholds_on_eval=args.thresholds_on_eval,
        age_bands=args.age_bands, bootstrap=args.bootstrap, seed=args.seed, n_bins=args.bins,
        title=args.title, vertebrae=vertebra_section(args, scores, found))
    print(format_summary(report))
    if found is not None and not args.vertebrae:
        found.to_csv(Path(args.out) / VERTEBRAE_FILE, index=False)
    print(f"wrote {args.out}/report.html and report.json")
    run = run_of_evaluation(args.out)
    if run is not None:  # the run's own evaluation: its model card reports it
        print(f"wrote {write_run_card(run)}")
    return 0


if __name__ == "__main__":
    sys.exit(user_errors(main)())

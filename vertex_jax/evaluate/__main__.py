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

import pandas as pd

from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.evaluate.report import build_report, format_summary
from vertex_jax.evaluate.table import read_scores
from vertex_jax.model_card import run_of_evaluation, write_run_card
from vertex_jax.run_layout import evaluation_dir


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
    p.add_argument("--label", action="append", help="model name (twice when comparing)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (0 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--age-bands", type=_floats, default=(60, 70, 80), help="age cut points (default 60,70,80)")
    p.add_argument("--bins", type=int, default=10, help="reliability diagram bins")
    p.add_argument("--title", default="")
    return add_verbosity(p)


def load_scores(args: argparse.Namespace) -> pd.DataFrame:
    """The score table to evaluate (with ``--workdir``: scored now, and ``args.compare``
    set to the second run's scores when ``--compare-workdir`` is given)."""
    if args.scores:
        return read_scores(args.scores)
    from vertex_jax.predict.run_scores import score_run

    splits = {args.split, args.threshold_split} - {"all"}
    if args.compare_workdir:
        args.compare = score_run(args.compare_workdir, sorted(splits))
    return score_run(args.workdir, sorted(splits))


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.out is None:
        if not args.workdir:
            p.error("--out is required with --scores")
        args.out = str(evaluation_dir(args.workdir))
    if args.compare_workdir and (not args.workdir or args.compare or args.compare_columns):
        p.error("--compare-workdir goes with --workdir and no other comparison")
    report = build_report(
        load_scores(args), args.out, tasks=args.tasks, threshold_split=args.threshold_split,
        eval_split=args.split, compare=args.compare, compare_columns=args.compare_columns,
        labels=args.label, thresholds=args.thresholds, thresholds_on_eval=args.thresholds_on_eval,
        age_bands=args.age_bands, bootstrap=args.bootstrap, seed=args.seed, n_bins=args.bins,
        title=args.title)
    print(format_summary(report))
    print(f"wrote {args.out}/report.html and report.json")
    run = run_of_evaluation(args.out)
    if run is not None:  # the run's own evaluation: its model card reports it
        print(f"wrote {write_run_card(run)}")
    return 0


if __name__ == "__main__":
    sys.exit(user_errors(main)())

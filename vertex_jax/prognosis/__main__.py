"""Do DL scores add to clinical risk factors for incident fracture? Cox, C-index, AUC, NRI, IDI, DCA, KM.

    python -m vertex_jax.prognosis --scores scores.csv --followup followup.csv --out DIR
        [--covariates age,sex,bmi] [--scores-columns pvf_prob,osteo_prob]
        [--thresholds thresholds.json [--threshold-key youden] | --threshold pvf_prob=0.4 ...]
        [--horizon 5] [--risk-thresholds 0.1,0.2] [--bootstrap 1000] [--seed 0]

Writes DIR/prognosis.html, DIR/prognosis.json and the figures as PNG; prints a summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.prognosis.analysis import Settings, analyse
from vertex_jax.prognosis.data import load_cohort
from vertex_jax.prognosis.report import summary_text, write_outputs
from vertex_jax.prognosis.thresholds import parse_overrides, resolve_thresholds


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    if not values or any(not 0 < v < 1 for v in values) or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing probabilities in (0, 1), got '{text}'")
    return values


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.prognosis", description=__doc__.splitlines()[0])
    p.add_argument("--scores", action="append", required=True, metavar="CSV",
                   help="scores CSV (one row per image); repeat to join files of one-task models")
    p.add_argument("--followup", required=True, metavar="CSV",
                   help="patient_id, followup_years (> 0), incident_fracture (0/1) [, more covariates]")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--covariates", type=_names, default=["age", "sex", "bmi"],
                   help="clinical risk factors, comma-separated (taken from the follow-up file when it "
                        "has the column, else from the scores)")
    p.add_argument("--scores-columns", type=_names, default=None,
                   help="DL score columns (default: pvf_prob and/or osteo_prob, whichever exist)")
    p.add_argument("--thresholds", metavar="JSON", help="thresholds.json from the evaluation report")
    p.add_argument("--threshold-key", default="youden", help="rule to read from thresholds.json")
    p.add_argument("--threshold", action="append", default=[], metavar="COLUMN=VALUE",
                   help="DL-positive cut-off for one score column (overrides --thresholds)")
    p.add_argument("--horizon", type=float, default=5.0, help="years for AUC, NRI, IDI, decision curve")
    p.add_argument("--risk-thresholds", type=_fractions, default=(0.1, 0.2),
                   help="risk category cut-offs for the categorical NRI")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no intervals)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", help="keep only score rows of this domain (xray / vfa)")
    p.add_argument("--split", help="keep only score rows of this split (e.g. test)")
    p.add_argument("--allow-missing-followup", action="store_true",
                   help="analyse scored patients with follow-up instead of refusing when some lack it")
    return add_verbosity(p)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if not args.covariates:
        p.error("--covariates needs at least one clinical risk factor (the comparison model)")
    if args.horizon <= 0 or args.bootstrap < 0:
        p.error("--horizon must be > 0 and --bootstrap >= 0")
    cohort = load_cohort(args.scores, args.followup, score_columns=args.scores_columns,
                         covariates=args.covariates, domain=args.domain, split=args.split,
                         allow_missing_followup=args.allow_missing_followup)
    thresholds, notes = resolve_thresholds(cohort.scores, path=args.thresholds, key=args.threshold_key,
                                           overrides=parse_overrides(args.threshold))
    cohort = dataclasses.replace(cohort, notes=(*cohort.notes, *notes))
    result = analyse(cohort, thresholds, Settings(horizon=args.horizon, risk_cutoffs=args.risk_thresholds,
                                                  bootstrap=args.bootstrap, seed=args.seed))
    result["inputs"] = {"scores": args.scores, "followup": args.followup, "thresholds_file": args.thresholds,
                        "threshold_key": args.threshold_key, "domain": args.domain, "split": args.split}
    paths = write_outputs(result, args.out)
    print(summary_text(result))
    print(f"wrote {paths['prognosis.html']}, {paths['prognosis.json']} and {len(paths) - 2} PNG file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(user_errors(main)())

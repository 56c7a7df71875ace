"""Validate a trained run on a second, independent cohort (generated, shifted, or given).

    python -m vertex_jax.validate --workdir RUN --out DIR [--shift scanner|population|acquisition]
        [--n 2000] [--seed 1] [--manifest CSV] [--recalibrate 200] [--bootstrap 1000]

Needs the run's internal evaluation (``python -m vertex_jax.evaluate --workdir RUN``: its
report and the thresholds chosen on validation). Writes DIR/report/ (the evaluation report
of the external cases, the same as ``evaluate`` gives on DIR/report/scores.csv with the
run's thresholds), DIR/validation.json and DIR/validation.md (internal vs external, the
differences with 95% intervals), and with ``--recalibrate N`` DIR/site/ (local.csv,
rest.csv, calibration.json, thresholds.json, before/ and after/ reports on the rest).
The generated cohort is kept in DIR/cohort and reused by a second run with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.synthetic.shifts import SHIFTS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.validate", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="training run (evaluated: RUN/evaluation)")
    p.add_argument("--out", required=True, help="output folder")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--shift", choices=tuple(SHIFTS), help="declared shift of the generated cohort "
                        "(default: none, the training distribution)")
    source.add_argument("--manifest", help="a real external set (manifest CSV) instead of a generated cohort")
    p.add_argument("--n", type=int, default=2000, help="patients (= images) to generate (default 2000)")
    p.add_argument("--seed", type=int, default=1, help="the generated cohort's seed (not the training one)")
    p.add_argument("--recalibrate", type=int, default=0, metavar="N",
                   help="fit a site calibration on N local cases and judge it on the rest (default 0: no)")
    p.add_argument("--method", default="platt", choices=("platt", "intercept", "temperature", "isotonic"),
                   help="site calibration (default platt: unbiased under every declared shift; 'intercept' "
                        "keeps the model's slope, steadier when that slope holds; docs/validation.md)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per interval")
    p.add_argument("--workers", type=int, help="processes generating the cohort (default all CPUs)")
    p.add_argument("--no-progress", action="store_true")
    return add_verbosity(p)


def _internal(workdir: Path) -> tuple[Path, dict]:
    """(thresholds.json, report.json content) of the run's internal evaluation."""
    from vertex_jax import runs
    from vertex_jax.errors import MissingInputError

    thresholds = runs.thresholds_path(workdir)
    report = thresholds.parent / "report.json"
    if not (thresholds.is_file() and report.is_file()):
        raise MissingInputError(f"{workdir} has no internal evaluation ({report.parent} with report.json and "
                                "thresholds.json)", todo=f"run python -m vertex_jax.evaluate --workdir {workdir}")
    return thresholds, json.loads(report.read_text())


def _site(args, scores, card: dict, tasks: Sequence[str], manifest: Path, thresholds: Path, out: Path) -> dict:
    """--recalibrate N: the local sample and the rest written as manifests, the site calibration
    and thresholds fitted on the sample, the rest evaluated before and after."""
    import pandas as pd

    from vertex_jax.calibrate.cases import draw_local
    from vertex_jax.calibrate.maps import Calibration
    from vertex_jax.errors import ConfigError
    from vertex_jax.evaluate.report import build_report
    from vertex_jax.validate.differences import task_rows
    from vertex_jax.validate.site import fit_site

    local = draw_local(scores["patient_id"], args.recalibrate, args.seed)
    if (~local).sum() < 10 or local.sum() < 2:
        raise ConfigError(f"--recalibrate {args.recalibrate} fits on {int(local.sum())} and judges on "
                          f"{int((~local).sum())} of the {len(scores)} case(s)",
                          todo="fit on at least 2 cases and leave at least 10 to judge it on")
    site = out / "site"
    site.mkdir(parents=True, exist_ok=True)
    rows = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    # paths relative to the manifest's folder -> relative to site/
    rows["path"] = [p if os.path.isabs(p) else os.path.relpath(manifest.parent / p, site) for p in rows["path"]]
    ids = set(scores["image_id"][local])
    rows[rows["image_id"].isin(ids)].to_csv(site / "local.csv", index=False)
    rows[~rows["image_id"].isin(ids)].to_csv(site / "rest.csv", index=False)
    method = args.method
    fit = fit_site(scores, local, tasks, method, {"split": "site", "manifest": str(site / "local.csv"),
                                                  "seed": args.seed}, Calibration.from_card(card))
    (site / "calibration.json").write_text(json.dumps(fit.calibration.to_dict(), indent=1) + "\n")
    (site / "thresholds.json").write_text(json.dumps(fit.thresholds, indent=2) + "\n")
    options = {"eval_split": "all", "bootstrap": args.bootstrap}
    before = build_report(scores[~local].reset_index(drop=True), site / "before", thresholds=thresholds,
                          title="Before site recalibration", **options)
    after = build_report(fit.rest, site / "after", thresholds=fit.thresholds, title="After site recalibration",
                         **options)
    per_task = {}
    for task in fit.thresholds:
        b = next(iter(before["models"].values()))["tasks"][task]["overall"]
        a = next(iter(after["models"].values()))["tasks"][task]["overall"]
        per_task[task] = [{k: v for k, v in r.items() if k != "difference"} for r in task_rows(b, a)]
    return {"method": method, "local_cases": int(local.sum()), "rest_cases": int((~local).sum()),
            "calibration": fit.calibration.to_dict(), "thresholds_on_local": fit.chosen, "tasks": per_task}


@user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from vertex_jax import runs
    from vertex_jax.calibrate.cases import check_disjoint
    from vertex_jax.calibrate.maps import Calibration
    from vertex_jax.evaluate.report import build_report, format_summary
    from vertex_jax.jsonable import jsonable
    from vertex_jax.predict.run_scores import score_manifest
    from vertex_jax.synthetic.shifts import get_shift
    from vertex_jax.validate.cohort import cohort_settings, external_cohort
    from vertex_jax.validate.differences import compare_reports
    from vertex_jax.validate.summary import render

    workdir, out = Path(args.workdir), Path(args.out)
    config = runs.read_config(workdir)
    thresholds, internal = _internal(workdir)
    step_dir = runs.resolve_step_dir(workdir)
    card = runs.read_json_item(step_dir, "card")
    generate_s = None
    if args.manifest:
        manifest = Path(args.manifest)
        description = f"the manifest {manifest}"
    else:
        settings = cohort_settings(config, n=args.n, seed=args.seed, shift=args.shift)
        start = time.perf_counter()
        manifest = external_cohort(out / "cohort", settings, workers=args.workers)
        generate_s = time.perf_counter() - start
        description = (f"synthetic, seed {args.seed}, " + (f"shift '{args.shift}' ({get_shift(args.shift).description})"
                       if args.shift else "the training distribution (no shift)"))
    start = time.perf_counter()
    scores = score_manifest(step_dir, manifest, progress=not args.no_progress)
    score_s = time.perf_counter() - start
    check_disjoint(Calibration.from_card(card), scores["image_id"], where=str(manifest))
    scores["split"] = "external"
    report = build_report(scores, out / "report", thresholds=thresholds, eval_split="all",
                          bootstrap=args.bootstrap, title=f"External validation: {description}")
    validation = {"run": str(workdir), "step": int(step_dir.name), "shift": args.shift,
                  "cohort": {"description": description, "manifest": str(manifest), "cases": len(scores),
                             "generate_s": generate_s, "seed": None if args.manifest else args.seed},
                  "score_s": score_s, "thresholds": str(thresholds),
                  "tasks": compare_reports(internal, report)}
    if args.recalibrate:
        validation["site"] = _site(args, scores, card, tuple(card["tasks"]), manifest, thresholds, out)
    (out / "validation.json").write_text(json.dumps(jsonable(validation), indent=1) + "\n")
    (out / "validation.md").write_text(render(validation) + "\n")
    print(format_summary(report))
    print(f"wrote {out}/validation.md, validation.json and report/ ({len(scores)} case(s); "
          + (f"generated in {generate_s:.0f} s, " if generate_s is not None else "") + f"scored in {score_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How steady is a site recalibration? Repeated local samples of a validated cohort.

    python benchmarks/site_recalibration_draws.py --workdir runs/demo --validation DIR [DIR ...]
        [--n 200,500,1000] [--methods platt,intercept] [--draws 20]

Each DIR is a ``python -m vertex_jax.validate`` output (its report/scores.csv). For each local
sample size and method, ``--draws`` seeded local samples (whole patients) are drawn; the site
calibration is fitted on each exactly as ``validate --recalibrate`` does, and the rest's
calibration intercept and slope are measured. Prints one markdown row per (cohort, n, method):
mean ± standard deviation over the draws and the share of draws with |intercept| <= 0.2.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from vertex_jax import runs
from vertex_jax.calibrate.cases import draw_local
from vertex_jax.calibrate.maps import Calibration
from vertex_jax.evaluate.calibration import recalibration
from vertex_jax.validate.site import fit_site


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--validation", nargs="+", required=True)
    p.add_argument("--n", default="200,500,1000")
    p.add_argument("--methods", default="platt,intercept")
    p.add_argument("--draws", type=int, default=20)
    args = p.parse_args()
    logging.disable(logging.WARNING)  # the isotonic/small-sample warnings, once per draw
    card = runs.read_json_item(runs.resolve_step_dir(args.workdir), "card")
    previous, tasks = Calibration.from_card(card), tuple(card["tasks"])
    print("| cohort | local cases | method | " + " | ".join(
        f"{t} intercept | {t} within ±0.2 | {t} slope" for t in tasks) + " |")
    print("|---|---|---|" + "---|" * 3 * len(tasks))
    for folder in args.validation:
        scores = pd.read_csv(Path(folder) / "report" / "scores.csv")
        for n in (int(x) for x in args.n.split(",")):
            for method in args.methods.split(","):
                got = np.array([_draw(scores, n, seed, tasks, method, previous) for seed in range(args.draws)])
                cells = []
                for i in range(len(tasks)):
                    a, b = got[:, 2 * i], got[:, 2 * i + 1]
                    cells += [f"{a.mean():+.2f} ± {a.std():.2f}", f"{np.mean(np.abs(a) <= 0.2):.0%}",
                              f"{b.mean():.2f} ± {b.std():.2f}"]
                print(f"| {Path(folder).name} | {n} | {method} | " + " | ".join(cells) + " |", flush=True)


def _draw(scores: pd.DataFrame, n: int, seed: int, tasks, method: str, previous) -> list[float]:
    local = draw_local(scores["patient_id"], n, seed)
    rest = fit_site(scores, local, tasks, method, {"split": "site"}, previous).rest
    out = []
    for task in tasks:
        known = rest[rest[task].notna()]
        cal = recalibration(known[task].to_numpy() == 1, known[f"{task}_prob"].to_numpy())
        out += [cal["intercept"], cal["slope"]]
    return out


if __name__ == "__main__":
    main()

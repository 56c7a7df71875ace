"""Localisation of a training run's test split, one saliency method per row (README table).

    python benchmarks/localization_table.py --workdir runs/demo --out runs/demo/localization \\
        --spec gradcam --spec hirescam --spec layercam:stage4,head

Each ``--spec METHOD[:LAYERS]`` runs ``python -m vertex_jax.predict`` on the run's test
split (its own ``splits.csv``) with ``--explain`` and the cohort's ``annotations.json``, and
the table gives the test AUROC of each task beside the pVF localisation figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from vertex_jax import runs
from vertex_jax.predict.__main__ import main as predict


def _row(spec: str, folder: Path, scores: pd.DataFrame, tasks: list[str]) -> str:
    m = json.loads((folder / "localization.json").read_text())
    pvf = m["tasks"]["pvf"]
    rand = m.get("randomization", {}).get("pvf", {}).get("spearman_mean")
    auroc = []
    for t in tasks:
        known = scores[t].notna() if t in scores else pd.Series(False, index=scores.index)
        auroc.append(f"{roc_auc_score(scores.loc[known, t].astype(int), scores.loc[known, f'{t}_prob']):.3f}"
                     if known.any() else "–")

    def pct(k):
        lo, hi = pvf[k]["ci95"]
        return f"{pvf[k]['rate']:.1%} ({lo:.0%}–{hi:.0%})"

    ch = pvf["chance"]
    return (f"| {spec} | {' / '.join(auroc)} | {pct('strict')} | {pct('tolerant')} | "
            f"{pvf['energy']['mean']:.3f} | {pct('level')} | {ch['image']:.1%} / {ch['spine']:.1%} / "
            f"{ch['level']:.1%} | {rand if rand is None else f'{rand:.2f}'} | {pvf['images']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--spec", action="append", required=True, help="METHOD[:LAYER,LAYER]")
    p.add_argument("--split", default="test")
    p.add_argument("--overlays", action="store_true", help="also write the overlay pictures")
    args = p.parse_args()
    workdir, out = Path(args.workdir), Path(args.out)
    manifest = runs.run_manifest(workdir)
    annotations = manifest.with_name("annotations.json")
    lines = ["| method | test AUROC (" + ", ".join(runs.read_config(workdir).tasks.split(",")) +
             ") | strict pointing | tolerant | energy | level | chance: image / spine / level "
             "| randomisation ρ | images |", "|---" * 9 + "|"]
    for spec in args.spec:
        method, _, layers = spec.partition(":")
        folder = out / spec.replace(":", "_").replace(",", "+")
        argv = ["--checkpoint", str(workdir), "--input", str(manifest), "--splits",
                str(runs.splits_path(workdir)), "--split", args.split, "--out",
                str(folder / "scores.csv"), "--explain", str(folder), "--method", method,
                "--annotations", str(annotations), "--no-progress"]
        if layers:
            argv += ["--layers", layers]
        if not args.overlays:
            argv.append("--no-overlays")
        predict(argv)
        scores = pd.read_csv(folder / "scores.csv")
        lines.append(_row(spec, folder, scores, runs.read_config(workdir).tasks.split(",")))
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

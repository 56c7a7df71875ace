"""Batch prediction: ``python -m vertex_jax.predict --checkpoint RUN --input FOLDER_OR_CSV --out scores.csv``.

``--backend onnx --model model.onnx`` serves an exported model without importing JAX.
Every file is accounted for: the summary counts scored, unreadable, not an image (DICOMDIR,
structured reports, ...) and skipped files; unreadable ones are listed with the reason in
``<out>_unreadable.csv``, skipped ones in ``<out>_skipped.csv``; the run goes on.
``--clinical-from-dicom`` fills blank age/sex/BMI from the DICOM headers (the CSV wins;
column ``clinical_source``).
``--explain DIR`` writes one overlay per image and task, the map's peak, region and level
into the scores, a ``review.html`` of the cases sorted by score and, with ``--annotations``
(vertebra boxes), ``localization.json`` (pointing game, energy, level accuracy, chance
baselines, randomisation check). ``--method`` picks the map (default: HiResCAM for every head,
at stage 1 for ``gap`` and at the finest layer an evidence head reads: it points best on
both, README "Localisation"); ``--gradcam DIR`` is ``--explain DIR --method gradcam``.
``--dicom-out DIR`` files, for every DICOM input, a Structured Report of the scores and (with
``--explain``) a Secondary Capture of each overlay into the source's study, under
``DIR/<StudyInstanceUID>/`` (:mod:`vertex_jax.dicom_out`; not for clinical use).
A model with the vertebra head (``model.vertebrae``; an ONNX export of one) also writes
``<out>_vertebrae.csv``: one row per vertebra found, its level, box and endplate points in
original pixels, Genant grade (learned and measured), fracture probability and height loss
(:mod:`vertex_jax.predict.vertebra_table`); the overlays, ``review.html`` and the SRs show them.
``--input dicomweb://host:port/root?PatientID=…`` fetches the matching studies from a PACS
(QIDO-RS, WADO-RS) into ``--spool DIR`` and scores them; ``--stow`` stores the
``--dicom-out`` files back in their studies (STOW-RS) (:mod:`vertex_jax.dicomweb`).
"""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports: see vertex_jax.hugepages
    from vertex_jax.hugepages import restart_with_hugepages

    restart_with_hugepages()

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from vertex_jax.explain import DEFAULT_METHOD, METHODS
from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.data.dicom_clinical import source_summary
from vertex_jax.dicomweb.address import is_dicomweb
from vertex_jax.errors import InputDataError
from vertex_jax.predict.inputs import collect_inputs
from vertex_jax.predict.run import account, score_table
from vertex_jax.predict.vertebra_table import VertebraTable, write_vertebrae


def _input_check(scores: pd.DataFrame, out: Path, *, refuse: bool) -> pd.DataFrame:
    """Say how many images the input check flagged (:mod:`vertex_jax.data.input_check`); with
    ``refuse``, move them to ``<out>_refused.csv`` and return the rest."""
    listing = out.with_name(f"{out.stem}_refused.csv")
    listing.unlink(missing_ok=True)
    flagged = scores["input_check"] != ""
    if not flagged.any():
        return scores
    reasons = scores.loc[flagged, "input_check"].str.split("; ").explode().str.split(" \\(").str[0]
    counts = ", ".join(f"{r} ×{n}" for r, n in reasons.value_counts().items())
    if not refuse:
        print(f"warning: {int(flagged.sum())} image(s) unlike the training images ({counts}); their scores are "
              "kept and flagged in column input_check (--refuse-unexpected withholds them)")
        return scores
    scores[flagged][["image_id", "path", "input_check"]].to_csv(listing, index=False)
    print(f"refused {int(flagged.sum())} image(s) unlike the training images ({counts}): listed in {listing}")
    return scores[~flagged].reset_index(drop=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("jax", "onnx"), default="jax")
    p.add_argument("--checkpoint", help="jax: run workdir, checkpoints dir or step dir")
    p.add_argument("--model", help="onnx: exported model.onnx (its model.json beside it)")
    p.add_argument("--input", required=True, help="folder of images, a CSV with a 'path' column, or a "
                   "DICOMweb server's studies: dicomweb://host:port/root[?StudyInstanceUID=…|PatientID=…]")
    p.add_argument("--spool", metavar="DIR", help="DICOMweb input: folder the fetched instances are kept in "
                   "(default: <out>_dicomweb/ beside --out; an instance already there is not fetched again)")
    p.add_argument("--stow", action="store_true", help="DICOMweb input: store the --dicom-out files back on "
                   "the server, in their studies (STOW-RS; the same UIDs on a re-run, so nothing doubles)")
    p.add_argument("--out", required=True, help="scores CSV to write")
    p.add_argument("--split", help="score only CSV rows of this split")
    p.add_argument("--splits", help="a run's splits.csv (image_id, split): the split of each row "
                   "for --split, instead of the CSV's own column")
    p.add_argument("--domain", help="domain of folder inputs (default: the model's)")
    p.add_argument("--clinical-from-dicom", action="store_true", help="age, sex and BMI from the "
                   "DICOM headers where the CSV has none (PatientAge, PatientSex, PatientWeight/Size)")
    p.add_argument("--refuse-unexpected", action="store_true",
                   help="withhold the scores of images the input check flags (not a lateral view, not a "
                        "spine, another shape; listed in <out>_refused.csv) instead of only flagging them")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=4, help="threads reading and preprocessing")
    p.add_argument("--explain", metavar="DIR", help="folder for overlays, review.html and "
                   "localization.json (jax backend)")
    p.add_argument("--method", choices=METHODS,
                   help=f"saliency map (default: {DEFAULT_METHOD}, at stage1 for a gap head and at "
                   "the finest layer an evidence head reads)")
    p.add_argument("--layers", help="comma-separated feature taps for the map, e.g. stage4,head")
    p.add_argument("--gradcam", metavar="DIR", help="the same as --explain DIR --method gradcam")
    p.add_argument("--annotations", help="vertebra boxes (annotations.json or a CSV image_id, level, "
                   "x0, y0, x1, y1, fractured): localisation metrics")
    p.add_argument("--thresholds", help="thresholds.json of an evaluation report: the operating "
                   "point (youden) shown in review.html and called in the --dicom-out reports")
    p.add_argument("--dicom-out", metavar="DIR", help="folder for DICOM outputs of DICOM inputs: a "
                   "Structured Report per image, a Secondary Capture per overlay (with --explain), "
                   "in DIR/<StudyInstanceUID>/")
    p.add_argument("--no-overlays", action="store_true", help="with --explain: findings and metrics only")
    p.add_argument("--no-progress", action="store_true")
    add_verbosity(p)
    args = p.parse_args(argv)
    if args.backend == "jax" and not args.checkpoint:
        p.error("--backend jax needs --checkpoint")
    if args.backend == "onnx" and not args.model:
        p.error("--backend onnx needs --model")
    if args.gradcam:
        if args.explain or (args.method and args.method != "gradcam"):
            p.error("--gradcam DIR is --explain DIR --method gradcam: give one of them")
        args.explain, args.method = args.gradcam, "gradcam"
    if args.backend == "onnx" and (args.explain or args.annotations):
        p.error("--explain/--annotations need the model itself: use --backend jax")
    if (args.annotations or args.method or args.layers) and not args.explain:
        p.error("--annotations, --method and --layers need --explain DIR")
    if args.thresholds and not (args.explain or args.dicom_out):
        p.error("--thresholds needs --explain DIR or --dicom-out DIR")
    if (args.spool or args.stow) and not is_dicomweb(args.input):
        p.error("--spool and --stow need a DICOMweb --input (dicomweb://host:port/root)")
    if args.stow and not args.dicom_out:
        p.error("--stow stores the --dicom-out files: give --dicom-out DIR")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def _backend(args: argparse.Namespace):
    if args.backend == "onnx":
        from vertex_jax.predict.onnx_backend import OnnxBackend
        return OnnxBackend(args.model)
    from vertex_jax.compile_cache import enable_compilation_cache
    from vertex_jax.predict.jax_backend import JaxBackend
    from vertex_jax.xla_flags import DEFAULT_PRESET, apply_preset
    apply_preset(DEFAULT_PRESET)
    enable_compilation_cache()
    return JaxBackend(args.checkpoint)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    source = _fetch(args, out) if is_dicomweb(args.input) else None  # an unreachable PACS fails fast
    backend = _backend(args)
    thresholds = _thresholds(args.thresholds, backend.tasks)  # a bad file stops the run before scoring
    if args.dicom_out:
        from vertex_jax.dicom_out.write import prepare_folder
        prepare_folder(Path(args.dicom_out))
    domain = args.domain or getattr(backend, "domain", None) or "xray"
    inputs = collect_inputs(source.fetched.folder if source else args.input, domain,
                            clinical_from_dicom=args.clinical_from_dicom)
    df = inputs.table if source is None else source.rows(inputs.table)
    if args.splits:
        saved = pd.read_csv(args.splits, dtype=str, keep_default_na=False)[["image_id", "split"]]
        df = df.drop(columns="split", errors="ignore").merge(saved, on="image_id", how="left")
        df["split"] = df["split"].fillna("")
    if args.split:
        df = df[df["split"] == args.split].reset_index(drop=True)
        if df.empty:
            raise InputDataError(f"no rows of split {args.split!r} in {args.input}",
                                 todo="give a split the CSV (or --splits) has: train, val or test")
    table = VertebraTable.for_backend(backend, list(df["image_id"]))
    writer = _explain_writer(args, backend, df, table) if args.explain else None
    scores, unreadable = score_table(df, backend, batch=args.batch, workers=args.workers,
                                     on_batch=writer, vertebrae=table, progress=not args.no_progress)
    if writer is not None:
        scores = scores.merge(writer.findings_frame(), on="image_id", how="left")
    out.parent.mkdir(parents=True, exist_ok=True)
    scores = _input_check(scores, out, refuse=args.refuse_unexpected)
    if args.clinical_from_dicom:
        scores = scores.merge(df[["image_id", "clinical_source", "clinical_notes"]], on="image_id", how="left")
    scores.to_csv(out, index=False)
    print(f"scored {len(scores)} image(s) with {backend.name} -> {out}")
    vertebrae = None if table is None else table.frame(scores)
    if line := write_vertebrae(out, vertebrae):
        print(line)
    without = int((scores["clinical_missing"] != "").sum())
    if without:
        print(f"{without} image(s) lacked some clinical value; the model's missing-value input "
              f"was used (column clinical_missing)")
    if args.clinical_from_dicom:
        print(source_summary(scores["clinical_source"]))
    print("\n".join(account(out, len(scores), unreadable, inputs.skipped)))
    if writer is not None:
        _write_explanations(args, backend, writer, scores, thresholds, vertebrae)
    if args.dicom_out:
        written = _write_dicom(args, backend, writer, scores, thresholds, vertebrae)
        if args.stow:
            from vertex_jax.dicomweb.prediction import store_back
            store_back(source, written)
    return 0 if len(scores) else 1


def _thresholds(path: str | None, tasks) -> dict[str, float]:
    """The youden cut-off per task of a thresholds.json (review.html, --dicom-out)."""
    if not path:
        return {}
    from vertex_jax.evaluate.thresholds import read_thresholds

    table = read_thresholds(path)
    return {t: table[t]["youden"]["threshold"] for t in tasks
            if table.get(t, {}).get("youden", {}).get("threshold") is not None}


def _fetch(args: argparse.Namespace, out: Path):
    """The DICOMweb input's studies, fetched into the spool folder."""
    from vertex_jax.dicomweb.prediction import fetch_input

    return fetch_input(args.input, args.spool or out.with_name(f"{out.stem}_dicomweb"))


def _write_dicom(args: argparse.Namespace, backend, writer, scores: pd.DataFrame,
                 thresholds: dict[str, float], vertebrae: pd.DataFrame | None) -> list[Path]:
    from vertex_jax.dicom_out.write import write_outputs

    overlay = None
    if writer is not None and writer.overlays:
        from vertex_jax.predict.explain_writer import overlay_name
        overlay = lambda image_id, task: Path(args.explain) / overlay_name(image_id, task)  # noqa: E731
    done = write_outputs(scores, args.dicom_out, tasks=backend.tasks, thresholds=thresholds,
                         method=args.method if writer is not None else None, overlay=overlay,
                         vertebrae=vertebrae)
    print("\n".join(done.summary()))
    return done.written


def _explain_writer(args: argparse.Namespace, backend, df, table):
    from vertex_jax.explain.localization import load_boxes
    from vertex_jax.models.build import build_model
    from vertex_jax.predict.explain_writer import ExplainWriter

    model = backend.trained.model
    args.method = args.method or DEFAULT_METHOD
    layers = tuple(x.strip() for x in args.layers.split(",") if x.strip()) if args.layers else None
    random_model = None
    if args.annotations:  # model-randomisation check: the same architecture, fresh weights
        random_model = build_model(backend.trained.config, seed=12345)
        random_model.eval()
    return ExplainWriter(model, backend.tasks, list(df["image_id"]), args.explain,
                         method=args.method, layers=layers,
                         boxes=load_boxes(args.annotations) if args.annotations else None,
                         overlays=not args.no_overlays, random_model=random_model,
                         vertebrae=None if table is None else table.found)


def _write_explanations(args: argparse.Namespace, backend, writer, scores,
                        thresholds: dict[str, float], vertebrae: pd.DataFrame | None) -> None:
    """review.html always; localization.json and its summary lines with boxes."""
    from vertex_jax.explain.review import render_review

    folder = Path(args.explain)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "review.html").write_text(render_review(scores, backend.tasks, writer.pictures, thresholds,
                                                      title=f"{backend.name} ({args.method})",
                                                      vertebrae=vertebrae))
    print(f"review: {folder / 'review.html'}")
    for task, ids in writer.flat.items():
        if ids:
            print(f"warning: {len(ids)} {task} map(s) empty or constant ({args.method} at "
                  f"{', '.join(writer.layers) or 'the evidence head'}): no peak, region or level "
                  f"reported for them (column {task}_map), e.g. {ids[0]}", file=sys.stderr)
    if not args.annotations:
        return
    summary = writer.summary()
    (folder / "localization.json").write_text(json.dumps(summary, indent=2))
    for task, m in summary["tasks"].items():
        if not m["images"]:
            continue
        chance = m["chance"]
        print(f"localisation of {task} ({args.method}, {m['images']} images with a fractured vertebra): "
              f"strict pointing {m['strict']['rate']:.1%} (chance {chance['image']:.1%} of the image, "
              f"{chance['spine']:.1%} of the spine), tolerant {m['tolerant']['rate']:.1%}, "
              f"level {m['level']['rate']:.1%} (chance {chance['level']:.1%}), energy "
              f"{m['energy']['mean']:.3f}")
    for task, r in summary.get("randomization", {}).items():
        print(f"randomisation check ({task}): Spearman {r['spearman_mean']:.3f} between the "
              f"model's maps and a re-initialised model's over {r['images']} images")


if __name__ == "__main__":
    sys.exit(user_errors(main)())

"""Batch prediction: ``python -m vertex_jax.predict --checkpoint RUN --input FOLDER_OR_CSV --out scores.csv``.

``--backend onnx --model model.onnx`` serves an exported model without importing JAX.
Unreadable files are listed with the reason in ``<out>_unreadable.csv``; the run goes on.
``--gradcam DIR`` writes heat-map overlays (JAX backend); with ``--annotations`` (boxes of
fractured vertebrae) it also reports the pointing-game accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vertex_jax.predict.inputs import load_inputs
from vertex_jax.predict.run import score_table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("jax", "onnx"), default="jax")
    p.add_argument("--checkpoint", help="jax: run workdir, checkpoints dir or step dir")
    p.add_argument("--model", help="onnx: exported model.onnx (its model.json beside it)")
    p.add_argument("--input", required=True, help="folder of images, or a CSV with a 'path' column")
    p.add_argument("--out", required=True, help="scores CSV to write")
    p.add_argument("--split", help="score only CSV rows of this split")
    p.add_argument("--domain", help="domain of folder inputs (default: the model's)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=4, help="threads reading and preprocessing")
    p.add_argument("--gradcam", help="folder for Grad-CAM overlays (jax backend)")
    p.add_argument("--annotations", help="annotations.json with vertebra boxes: pointing game")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.backend == "jax" and not args.checkpoint:
        p.error("--backend jax needs --checkpoint")
    if args.backend == "onnx" and not args.model:
        p.error("--backend onnx needs --model")
    if args.backend == "onnx" and (args.gradcam or args.annotations):
        p.error("--gradcam/--annotations need gradients: use --backend jax")
    if args.annotations and not args.gradcam:
        p.error("--annotations needs --gradcam DIR")
    if args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def _backend(args: argparse.Namespace):
    if args.backend == "onnx":
        from vertex_jax.predict.onnx_backend import OnnxBackend
        return OnnxBackend(args.model)
    from vertex_jax.predict.jax_backend import JaxBackend
    return JaxBackend(args.checkpoint)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backend = _backend(args)
    domain = args.domain or getattr(backend, "domain", None) or "xray"
    df = load_inputs(args.input, domain)
    if args.split:
        df = df[df["split"] == args.split].reset_index(drop=True)
        if df.empty:
            raise SystemExit(f"no rows of split {args.split!r} in {args.input}")
    writer = None
    if args.gradcam:
        from vertex_jax.predict.gradcam_writer import GradCamWriter
        writer = GradCamWriter(backend.trained.model, backend.tasks, list(df["image_id"]),
                               args.gradcam, args.annotations)
    scores, unreadable = score_table(df, backend, batch=args.batch, workers=args.workers,
                                     on_batch=writer, progress=not args.no_progress)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out, index=False)
    print(f"scored {len(scores)} of {len(df)} image(s) with {backend.name} -> {out}")
    without = int((scores["clinical_missing"] != "").sum())
    if without:
        print(f"{without} image(s) lacked some clinical value; the model's missing-value input "
              f"was used (column clinical_missing)")
    if len(unreadable):
        listing = out.with_name(out.stem + "_unreadable.csv")
        unreadable.to_csv(listing, index=False)
        print(f"{len(unreadable)} unreadable file(s), listed with the reason in {listing}:")
        for r in unreadable.head(5).itertuples():
            print(f"  {r.path}: {r.reason}")
    if writer is not None:
        summary = writer.summary()
        (Path(args.gradcam) / "pointing_game.json").write_text(json.dumps(summary, indent=2))
        if summary["pointing_game_images"]:
            print(f"pointing game (pVF heat-map peak inside a fractured vertebra): "
                  f"{summary['pointing_game_accuracy']:.1%} of {summary['pointing_game_images']} images")
    return 0 if len(scores) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Export a trained model for serving: ONNX and/or TF SavedModel, each with model.json.

    python -m vertex_jax.export --checkpoint RUN --format onnx|savedmodel|all --out DIR
        [--thresholds thresholds.json] [--overwrite] [--opset 21] [--platforms cpu,cuda]
        [--serving-version 1]

Every export is verified before it is moved into DIR: random batches through JAX,
onnxruntime and TensorFlow must agree on probabilities to 1e-4; the measured differences
are printed and stored in model.json. Exit status 1 (and nothing written) otherwise.
"""

from __future__ import annotations

import argparse
import sys

from absl import logging as absl_logging

from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.export.onnx_format import DEFAULT_OPSET
from vertex_jax.export.run import export
from vertex_jax.export.savedmodel import DEFAULT_PLATFORMS
from vertex_jax.export.verify import TOLERANCE


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="run workdir, its checkpoints dir or one step dir")
    p.add_argument("--format", default="all", help="onnx, savedmodel or all (default all)")
    p.add_argument("--out", required=True, help="output folder (onnx/, savedmodel/<version>/)")
    p.add_argument("--thresholds", metavar="JSON",
                   help="thresholds.json chosen on validation (default <workdir>/evaluation/thresholds.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--dtype", default="float32", help="compute dtype of the export (float32 only)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    p.add_argument("--platforms", default=",".join(DEFAULT_PLATFORMS),
                   help="SavedModel lowering platforms (default %(default)s)")
    p.add_argument("--serving-version", type=int, default=1,
                   help="SavedModel version directory for TF Serving (default 1)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="max |difference| of probabilities between runtimes (default %(default)g)")
    return add_verbosity(p)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's read-only notices
    export(args.checkpoint, args.out, args.format.split(","), thresholds=args.thresholds,
           overwrite=args.overwrite, dtype=args.dtype, opset=args.opset,
           platforms=tuple(p.strip() for p in args.platforms.split(",") if p.strip()),
           serving_version=args.serving_version, tolerance=args.tolerance)
    return 0


if __name__ == "__main__":
    sys.exit(user_errors(main)())

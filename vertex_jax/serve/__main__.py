"""Scores over HTTP: ``python -m vertex_jax.serve --model EXPORT_DIR [--host H --port P]``.

Serves an exported ONNX model (``EXPORT_DIR``: the output folder of ``python -m
vertex_jax.export``, its ``onnx/`` folder or the ``model.onnx`` file) with onnxruntime,
without JAX (``pip install 'vertex_jax[serve]'``). ``POST /predict`` takes a multipart
``file`` (DICOM, PNG, JPEG, TIFF) and optional ``age``, ``sex`` (F/M), ``bmi``, and answers
the scores ``predict --backend onnx`` writes for the same file, as JSON (``?report=sr``: the
DICOM Structured Report of a DICOM upload); ``GET /health``; ``GET /model`` (model.json);
``GET /model/card`` (the clinical model card, Markdown).
Bad uploads are answered 4xx with ``{"error": ..., "todo": ...}``; a body over
``--max-upload-mb`` is refused (413) unread.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.errors import UserError
from vertex_jax.serve.upload import DEFAULT_MAX_UPLOAD_MB, MB


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="the export's output folder (onnx/model.onnx under it), its onnx/ folder or model.onnx")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="N",
                   help=f"largest request body accepted, in MB of 2^20 bytes (default {DEFAULT_MAX_UPLOAD_MB:g})")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_verbosity(p)
    args = p.parse_args(argv)
    if not 0 < args.max_upload_mb <= 4096:
        p.error("--max-upload-mb must be in (0, 4096]")
    if not 0 <= args.port <= 65535:
        p.error("--port must be in 0..65535")
    if args.threads < 0:
        p.error("--threads must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn

        from vertex_jax.serve.app import create_app
    except ModuleNotFoundError as error:
        raise UserError(f"python -m vertex_jax.serve needs {error.name}, which this install lacks",
                        todo="pip install 'vertex_jax[serve]'") from None

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    app = create_app(args.model, max_upload_bytes=int(args.max_upload_mb * MB), threads=args.threads)
    scorer = app.state.scorer
    print(f"serving {scorer.name} (step {scorer.backend.step}, tasks {', '.join(scorer.backend.tasks)}) "
          f"from {scorer.path} on http://{args.host}:{args.port}: POST /predict, GET /health, GET /model, "
          f"GET /model/card; "
          f"uploads up to {args.max_upload_mb:g} MB", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(user_errors(main)())

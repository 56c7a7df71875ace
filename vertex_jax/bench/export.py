"""CPU inference throughput: the exported ONNX model on onnxruntime against JAX.

    python -m vertex_jax.bench.export [--config configs/xray.py] [--batch 1,2] [--repeats 5]
        [--threads 0] [--json FILE]

The model is the config's (default: EfficientNet-B4 on the 1024x512 canvas) with random
weights, which do not change the speed. JAX runs the training code's CPU path
(``depthwise="auto"``: shifted multiply-adds, jit-compiled); onnxruntime runs the model as
``python -m vertex_jax.export`` writes it (grouped convolutions). Each batch size is
warmed up once (compilation, allocation), then timed ``repeats`` times; the median is
reported, with the max |difference| of the two runtimes' probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections

from vertex_jax.config_files import load_config
from vertex_jax.export.graph import Signature, export_model
from vertex_jax.export.onnx_format import export_onnx, onnx_session
from vertex_jax.export.verify import jax_runner, max_differences, onnx_runner
from vertex_jax.models.build import build_model, tasks_of


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: compilation, allocation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_bench(config: ml_collections.ConfigDict, batches: Sequence[int], repeats: int,
              threads: int = 0) -> list[dict[str, Any]]:
    model = build_model(config, seed=0)
    model.eval()
    signature = Signature(tuple(config.data.canvas), config.data.cache_dtype, tasks_of(config))
    jax_run = jax_runner(model, signature)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(export_model(config, model), signature, Path(tmp) / "model.onnx")
        onnx_run = onnx_runner(onnx_session(path, threads))
        results = []
        for batch in batches:
            inputs = signature.random_inputs(batch)
            row = {"variant": config.model.variant, "canvas": list(signature.canvas), "batch": batch,
                   "repeats": repeats}
            for name, run in (("jax", jax_run), ("onnxruntime", onnx_run)):
                row[f"{name}_images_per_s"] = batch / median_seconds(lambda: run(inputs), repeats)
            diffs = max_differences(jax_run(inputs), onnx_run(inputs))
            row["max_abs_diff_probabilities"] = diffs["probabilities"]
            results.append(row)
    return results


def environment(threads: int) -> dict[str, Any]:
    import onnxruntime
    return {"cpu_count": os.cpu_count(), "onnxruntime_threads": threads or "default",
            "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "onnxruntime": onnxruntime.__version__}


def format_results(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """One line per batch size."""
    lines = []
    for r in results:
        h, w = r["canvas"]
        lines.append(f"{r['variant']} {h}x{w} batch {r['batch']}: onnxruntime "
                     f"{r['onnxruntime_images_per_s']:.2f} img/s, JAX {r['jax_images_per_s']:.2f} img/s "
                     f"(median of {r['repeats']}; CPU, {env['cpu_count']} cores; max |diff| "
                     f"probabilities {r['max_abs_diff_probabilities']:.1e})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vertex_jax.bench.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/xray.py", help="config file[:variant] (default %(default)s)")
    p.add_argument("--batch", default="1,2", help="comma-separated batch sizes (default %(default)s)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = default)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    if min(batches) < 1 or args.repeats < 1:
        p.error("--batch sizes and --repeats must be >= 1")
    config = load_config(args.config)
    results = run_bench(config, batches, args.repeats, args.threads)
    env = environment(args.threads)
    print(format_results(results, env))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

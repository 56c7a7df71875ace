"""Throughput of the jitted training / evaluation step on this machine's devices.

``python -m vertex_jax.bench --config=configs/xray.py [--what train|eval|all] [--steps 10]``

Random inputs of the configured shape (no data needed), every device of the mesh, the
same step functions the training run uses. Reports compile time, the median step time
over ``--repeats`` runs of ``--steps`` steps after a warm-up, images/s, FLOPs per step
from XLA's cost analysis and the achieved TFLOP/s. Input-pipeline throughput:
``python -m vertex_jax.data.bench``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from vertex_jax.train import mesh as meshlib
from vertex_jax.train.state import TrainState, build_model, build_optimizer, tasks_of
from vertex_jax.train.step import make_eval_step, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/xray.py", "Run configuration file.")
_WHAT = flags.DEFINE_enum("what", "train", ["train", "eval", "all"], "Which step to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")
_JSON = flags.DEFINE_string("json", "", "Also write the results here.")


def random_batch(config: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = config.data.canvas
    t = len(tasks_of(config))
    return {"image": rng.integers(0, 256, (batch, h, w, 1), dtype=np.uint8),
            "clinical": rng.normal(size=(batch, 3)).astype(np.float32),
            "clinical_mask": np.ones((batch, 3), np.float32),
            "labels": (rng.random((batch, t)) < 0.3).astype(np.float32),
            "label_mask": np.ones((batch, t), np.float32),
            "index": np.arange(batch, dtype=np.int64), "epoch": np.zeros(batch, np.int64),
            "valid": np.ones(batch, bool)}


def time_step(step, state, batch, *, steps: int, repeats: int, carries_state: bool) -> dict[str, float]:
    """Compile, warm up, then the median seconds per step over ``repeats`` runs."""
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    out = None
    for _ in range(2):
        out = step(state, batch)
        state = out[0] if carries_state else state
    jax.block_until_ready(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            out = step(state, batch)
            state = out[0] if carries_state else state
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / steps)
    return {"compile_s": compile_s, "step_s": statistics.median(times), "flops_per_step": flops}


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    mesh = meshlib.make_mesh()
    results: dict[str, Any] = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(),
                               "jax": jax.__version__, "machine": platform.platform(),
                               "variant": config.model.variant, "canvas": list(config.data.canvas),
                               "dtype": config.model.dtype, "remat": config.model.remat}
    for what in (["train", "eval"] if _WHAT.value == "all" else [_WHAT.value]):
        batch_size = config.batch_size if what == "train" else config.eval_batch_size
        meshlib.check_batch(batch_size, mesh)
        ts = TrainState.create(build_model(config, seed=0), build_optimizer(config, 100))
        state = jax.jit(lambda s: s, out_shardings=meshlib.replicated(mesh))(ts.state)
        batch = meshlib.to_global(random_batch(config, batch_size), mesh)
        if what == "train":
            r = time_step(make_train_step(ts.graphdef, config, mesh), state, batch,
                          steps=_STEPS.value, repeats=_REPEATS.value, carries_state=True)
        else:
            r = time_step(make_eval_step(ts.graphdef, mesh), state, batch,
                          steps=_STEPS.value, repeats=_REPEATS.value, carries_state=False)
        r["images_per_s"] = batch_size / r["step_s"]
        r["tflops_per_s"] = r["flops_per_step"] / r["step_s"] / 1e12
        r["batch"] = batch_size
        results[what] = r
        print(f"{what:5s} {config.model.variant} {config.data.canvas[0]}x{config.data.canvas[1]} "
              f"{config.model.dtype} batch {batch_size} on {jax.device_count()}x {results['device']}: "
              f"{r['images_per_s']:.3g} images/s, {r['step_s'] * 1e3:.1f} ms/step, compile "
              f"{r['compile_s']:.1f} s, {r['flops_per_step'] / 1e9:.1f} GFLOP/step, "
              f"{r['tflops_per_s']:.3f} TFLOP/s", flush=True)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)

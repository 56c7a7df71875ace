"""The training loop's throughput beside the isolated step's: ``bench --what loop``.

Each run is :func:`vertex_jax.train.loop.train_and_evaluate` itself, in a fresh process,
capped at ``steps`` steps: data from the cache through grain, sharding, the device
prefetch, logging every ``log_every_steps``, validation and a checkpoint at every epoch's
end and one at the end, as training does. Its figures are the loop's own clock
(``summary["throughput"]``, :class:`vertex_jax.train.metrics.Throughput`): every step but
the first of each epoch, validation and saves left out, with the process's user and
system CPU time over those steps. ``steps`` under one epoch (the demo: 57) keeps
validation and checkpoints out of the run except the final save.

The data (synthetic cohort and cache) is prepared once, in ``config.data.data_dir`` when
set (e.g. an existing run's ``runs/demo/data``), else in a temporary directory shared by
the runs; each run trains in a fresh temporary workdir.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from vertex_jax.bench.measure import environment, run_isolated
from vertex_jax.bench.record import make_record


def _run_loop(config: Any, workdir: str) -> dict[str, Any]:
    """One capped training run in this process: its summary, wall time and environment."""
    from vertex_jax.train.loop import train_and_evaluate

    t0 = time.perf_counter()
    summary = train_and_evaluate(config, workdir)
    return {"summary": summary, "wall_s": time.perf_counter() - t0, "environment": environment(),
            "devices": jax.device_count()}


def loop_config(config: Any, steps: int, data_dir: str) -> Any:
    """``config`` capped at ``steps`` steps, never stopped early, not calibrated."""
    if steps < 2:
        raise ValueError(f"the loop needs at least 2 steps (its clock leaves the first out), got {steps}")
    config = config.copy_and_resolve_references()
    config.max_steps = steps
    config.num_epochs = max(config.num_epochs, steps)  # at least one step per epoch
    config.early_stop_patience = steps + 1
    config.calibration = "none"
    config.data.data_dir = config.data.data_dir or data_dir
    return config


def measure_loop(config: Any, *, steps: int, repeats: int, options: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(environment, record, runs): ``repeats`` capped training runs, each in a fresh process;
    the record is in :mod:`vertex_jax.bench.record`'s format (``what="loop"``, the median
    run's seconds per step), ``runs`` each run's throughput and wall time."""
    with tempfile.TemporaryDirectory(prefix="vertex_loop_") as tmp:
        config = loop_config(config, steps, str(Path(tmp) / "data"))
        runs = [run_isolated(_run_loop, config, str(Path(tmp) / f"run{i}")) for i in range(repeats)]
    clocks = [r["summary"]["throughput"] for r in runs]
    if any(not c["steps_timed"] for c in clocks):
        raise RuntimeError(f"a loop run timed no step ({clocks}); give more --steps")
    record = make_record(
        framework="jax", what="loop", variant=config.model.variant, height=config.data.canvas[0],
        width=config.data.canvas[1], batch=config.batch_size, dtype=config.model.dtype,
        remat=bool(config.model.remat), options=dict(options or {}), devices=runs[0]["devices"],
        params=None, compile_s=None, step_s_runs=[c["seconds"] / c["steps_timed"] for c in clocks],
        model_flops=None,
        cpu_s_runs=[(c["user_s"] / c["steps_timed"], c["system_s"] / c["steps_timed"]) for c in clocks])
    detail = [{"steps_timed": c["steps_timed"], "images_per_s": c["images_per_s"],
               "run_wall_s": r["wall_s"], "status": r["summary"]["status"]} for c, r in zip(clocks, runs)]
    return runs[0]["environment"], record, detail

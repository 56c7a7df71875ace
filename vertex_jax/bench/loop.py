"""The training loop's throughput beside the isolated step's: ``bench --what loop``.

Each run is :func:`vertex_jax.train.loop.train_and_evaluate` itself, in a fresh process,
capped at ``steps`` steps: data from the cache through grain, sharding, the device
prefetch, logging every ``log_every_steps``, validation and a checkpoint at every epoch's
end and one at the end, as training does. Its figures are the loop's own clock
(``summary["throughput"]``, :class:`vertex_jax.train.metrics.Throughput`): every step but
the first of each epoch, validation and saves left out, with the process's user and
system CPU time over those steps, each timed step's interval (the record's
``step_s_each``), the host's time to dispatch a step (``dispatch_s``) and its wait for the
next device batch (each run's ``wait_s``: the input pipeline holding the steps up).
``steps`` under one epoch (the demo: 57) leaves one validation and one checkpoint, at the
end, both off the clock.

The data: with ``config.data.data_dir`` or ``config.data.manifest`` set (e.g. an existing
run's ``runs/demo/data``), that data (synthetic cohort or manifest) and its cache, prepared
by the first run as training does. With neither, random canvases of the configured size
(:mod:`vertex_jax.bench.canvas_cohort`), ``max(steps + 2, STEPS_PER_EPOCH) * batch`` for training and one
evaluation batch for validation, written in a temporary directory shared by the runs in
well under a second at 1024×512; each run trains in a fresh temporary workdir.

Beside the loop, the input pipeline alone (:func:`measure_input`, in the first run's
process before it trains): the training batches from the cache through grain, sharded
and put on the devices as the loop's prefetch does, no step, ``steps`` batches per timed
run after two warm-up batches.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax

from vertex_jax.bench.canvas_cohort import write_random_cohort
from vertex_jax.bench.feed import measure_input
from vertex_jax.bench.measure import STEPS_PER_EPOCH, environment, run_isolated
from vertex_jax.bench.record import make_record
from vertex_jax.errors import ConfigError


def _run_loop(config: Any, workdir: str, input_workdir: str | None = None, input_batches: int = 0,
              input_repeats: int = 1) -> dict[str, Any]:
    """One capped training run in this process: its summary, wall time and environment;
    with ``input_batches``, first :func:`measure_input` (in ``input_workdir``) as "input"."""
    from vertex_jax.train.loop import train_and_evaluate

    result = {}
    if input_batches:
        result["input"] = measure_input(config, input_workdir, batches=input_batches,
                                        repeats=input_repeats)
    t0 = time.perf_counter()
    summary = train_and_evaluate(config, workdir)
    return {**result, "summary": summary, "wall_s": time.perf_counter() - t0,
            "environment": environment(), "devices": jax.device_count()}


def random_data(config: Any, data_dir: str, steps: int) -> dict[str, Any]:
    """Random canvases for ``steps`` capped steps (module docstring) in ``data_dir``, and
    ``config.data.manifest`` pointed at them; returns what was written and how fast. At
    least :data:`~vertex_jax.bench.measure.STEPS_PER_EPOCH` batches, one epoch: up to
    ``STEPS_PER_EPOCH - 2`` steps the loop's training step is then the isolated step's
    program (the same schedule), compiled once for both."""
    t0 = time.perf_counter()
    batches = max(steps + 2, STEPS_PER_EPOCH)
    cohort = write_random_cohort(config, data_dir, train=batches * config.batch_size,
                                 val=config.eval_batch_size, seed=config.seed)
    seconds = time.perf_counter() - t0
    config.data.manifest = str(cohort.manifest)
    return {"source": "random canvases", "canvases": cohort.written, "write_s": seconds,
            "canvases_per_s": cohort.written / seconds}


def loop_config(config: Any, steps: int, data_dir: str, *, min_epochs: int) -> Any:
    """``config`` capped at ``steps`` steps, never stopped early, not calibrated, and run
    for at least ``min_epochs`` epochs (enough for ``steps`` whatever the epoch's length).
    Only that many: the epochs set the learning-rate schedule, a constant of the step's
    program, which is then the isolated step's (compiled once for both)."""
    if steps < 2:
        raise ConfigError(f"the loop needs at least 2 steps (its clock leaves the first out), got {steps}")
    config = config.copy_and_resolve_references()
    config.max_steps = steps
    config.num_epochs = max(config.num_epochs, min_epochs)
    config.early_stop_patience = steps + 1
    config.calibration = "none"
    config.data.data_dir = config.data.data_dir or data_dir
    return config


def loop_data(config: Any, steps: int, data_dir: str) -> tuple[Any, dict[str, Any]]:
    """(:func:`loop_config`, where its data comes from): ``config.data.data_dir`` or
    ``config.data.manifest`` when either is set, else random canvases written in
    ``data_dir`` (:func:`random_data`)."""
    given = bool(config.data.data_dir or config.data.manifest)
    # Given data: epochs of unknown length, at least one step each. Random canvases: one
    # epoch holds every step (random_data).
    config = loop_config(config, steps, data_dir, min_epochs=steps if given else 1)
    if given:
        return config, {"source": config.data.manifest or config.data.data_dir}
    return config, random_data(config, config.data.data_dir, steps)


def periodic_stall(step_s_each: list[float], period: int) -> dict[str, Any] | None:
    """A run's step intervals by their position in every ``period`` steps (the logging
    period): the slowest position's median beside the median step. A stall every ``period``
    steps (the host reading a step's metrics before the next one is queued, processes
    agreeing whether to stop) shows as a slowest position above the median. None for runs
    shorter than two periods."""
    if period < 2 or len(step_s_each) < 2 * period:
        return None
    positions = [statistics.median(step_s_each[j::period]) for j in range(period)]
    return {"period": period, "slowest_position_s": max(positions), "median_s": statistics.median(step_s_each)}


def measure_loop(config: Any, *, steps: int, repeats: int, options: dict[str, Any] | None = None,
                 isolate: bool = True) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(environment, record, detail): ``repeats`` capped training runs, each in a fresh
    process (in this one without ``isolate``: a dry run, e.g. in tests); the record is in
    :mod:`vertex_jax.bench.record`'s format (``what="loop"``, the median run's seconds per
    step); ``detail``: "runs" (each run's throughput, wall time and median host dispatch
    and batch wait per step, :func:`periodic_stall`), "input" (the input
    pipeline alone, :func:`measure_input`) and "data" (where the data came from; for
    random canvases how many were written and how fast)."""
    run = run_isolated if isolate else (lambda fn, *args: fn(*args))
    with tempfile.TemporaryDirectory(prefix="vertex_loop_") as tmp:
        config, data = loop_data(config, steps, str(Path(tmp) / "data"))
        runs = [run(_run_loop, config, str(Path(tmp) / f"run{i}"), str(Path(tmp) / "input"),
                    steps if i == 0 else 0, repeats) for i in range(repeats)]
    clocks = [r["summary"]["throughput"] for r in runs]
    if any(not c["steps_timed"] for c in clocks):
        raise RuntimeError(f"a loop run timed no step ({clocks}); give more --steps")
    record = make_record(
        framework="jax", what="loop", variant=config.model.variant, height=config.data.canvas[0],
        width=config.data.canvas[1], batch=config.batch_size, dtype=config.model.dtype,
        remat=bool(config.model.remat), options=dict(options or {}), devices=runs[0]["devices"],
        params=None, compile_s=None, step_s_runs=[c["seconds"] / c["steps_timed"] for c in clocks],
        model_flops=None,
        cpu_s_runs=[(c["user_s"] / c["steps_timed"], c["system_s"] / c["steps_timed"]) for c in clocks],
        step_s_each=[t for c in clocks for t in c["step_s_each"]],
        dispatch_s_each=[t for c in clocks for t in c["dispatch_s_each"]])
    detail = [{"steps_timed": c["steps_timed"], "images_per_s": c["images_per_s"],
               "dispatch_s": c["dispatch_s_median"], "wait_s": c["wait_s_median"],
               "run_wall_s": r["wall_s"], "status": r["summary"]["status"],
               "stall": periodic_stall(c["step_s_each"], config.log_every_steps)} for c, r in zip(clocks, runs)]
    return runs[0]["environment"], record, {"runs": detail, "input": runs[0]["input"], "data": data}


def format_input_rates(loop_runs: list[dict[str, Any]]) -> str:
    """One line per sweep point (``extra["loop_runs"]`` of the bench): the input pipeline's
    images/s alone, beside the loop's, and the loop's median host time per step waiting for
    its batch and dispatching the step."""
    lines = []
    for entry in loop_runs:
        label = ", ".join(f"{k}={v}" for k, v in entry["point"].items()) or "config as given"
        rate = entry["input"]["images_per_s"]
        loop = statistics.median(r["images_per_s"] for r in entry["runs"])
        waits = [r["wait_s"] for r in entry["runs"] if r["wait_s"] is not None]
        dispatches = [r["dispatch_s"] for r in entry["runs"] if r["dispatch_s"] is not None]
        host = (f"; per step the loop waited {1e3 * statistics.median(waits):.2f} ms for its batch and "
                f"dispatched in {1e3 * statistics.median(dispatches):.2f} ms" if waits and dispatches else "")
        stalls = [r["stall"] for r in entry["runs"] if r.get("stall")]
        if stalls:
            host += (f"; every {stalls[0]['period']} steps (logging) the slowest step "
                     f"{1e3 * statistics.median(s['slowest_position_s'] for s in stalls):.2f} ms against a median "
                     f"{1e3 * statistics.median(s['median_s'] for s in stalls):.2f}")
        lines.append(f"input alone ({label}): cache -> device batch {rate:.3g} images/s, "
                     f"{rate / loop:.1f}x the loop's {loop:.3g}{host}")
    return "\n".join(lines)

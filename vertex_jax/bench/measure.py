"""Measure one configuration: the jitted training or evaluation step on random batches.

The step functions are the ones training uses (:mod:`vertex_jax.train.step`) on every
device of the mesh. Reported: compile time; the median step time over ``repeats`` runs of
``steps`` steps after two warm-up steps; XLA's cost analysis of the compiled step (FLOPs
and bytes accessed) beside the analytic model FLOPs (:mod:`vertex_jax.bench.flops`);
the allocator's peak memory (``peak_bytes_in_use``; CPUs keep no such statistics, so
null there) and XLA's own memory plan for the step (arguments + outputs + temporaries).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import queue
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.extend import backend as jax_backend

from vertex_jax import mesh as meshlib
from vertex_jax import tracer_probes
from vertex_jax.bench.flops import count_flops
from vertex_jax.bench.record import CpuClock, host, make_record, versions
from vertex_jax.compile_cache import enable_compilation_cache
from vertex_jax.models.build import tasks_of
from vertex_jax.train.packing import StatePacking, pack_state_enabled
from vertex_jax.train.state import initialise, model_and_optimizer
from vertex_jax.train.step import make_eval_step, make_train_step
from vertex_jax.errors import ConfigError

__all__ = ["STEPS_PER_EPOCH", "PreparedStep", "prepare_step", "stepped_state", "random_batch", "environment", "make_step", "abstract_state", "measure", "measure_isolated",
           "run_isolated"]


# The epoch length the measured step's learning-rate schedule assumes. The loop benchmark's
# random cohort has as many batches, so that its training step is the same program
# (the same schedule constants) and the persistent compilation cache serves it.
STEPS_PER_EPOCH = 100


def random_batch(config: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of the pipeline's layout (uint8 canvases, clinical values, labels)."""
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


def environment() -> dict[str, Any]:
    """Devices, backend and library versions of this process."""
    device = jax.devices()[0]
    backend_version = jax_backend.get_backend().platform_version  # CUDA version on GPUs
    return {"device": device.device_kind, "platform": device.platform, "devices": jax.device_count(),
            "processes": jax.process_count(), "backend_version": backend_version,
            "xla_flags": os.environ.get("XLA_FLAGS"), "tracer_probe": tracer_probes.active(),
            "versions": versions(["jax", "jaxlib", "flax", "optax", "jax-cuda12-plugin",
                                  "jax-cuda13-plugin"]), **host()}


def make_step(config: Any, what: str, graphdef: nnx.GraphDef, mesh,
              packing: StatePacking | None = None) -> Callable:
    """The jitted training or evaluation step of :mod:`vertex_jax.train.step`."""
    return (make_train_step(graphdef, config, mesh, packing) if what == "train"
            else make_eval_step(graphdef, mesh))


def _create(config: Any) -> tuple[nnx.Module, nnx.Optimizer]:
    """Model and optimizer as training builds them (``TrainState``'s structure)."""
    return model_and_optimizer(config, STEPS_PER_EPOCH, seed=0)


def abstract_state(config: Any) -> tuple[nnx.GraphDef, nnx.State, int]:
    """Graph definition, abstract state and parameter count, nothing allocated."""
    model, optimizer = nnx.eval_shape(lambda: _create(config))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    graphdef, state = nnx.split((model, optimizer))
    return graphdef, state, int(params)


def _initial_state(config: Any, mesh) -> nnx.State:
    """Random initial state, replicated, made by one program (:func:`initialise`)."""
    return initialise(lambda: _create(config), meshlib.replicated(mesh))[1]


def stepped_state(config: Any, what: str, mesh) -> tuple[nnx.State | dict[str, jax.Array], StatePacking | None]:
    """A random initial state as the ``what`` step takes it, and its packing: packed per
    dtype for a training step when ``config.pack_state`` says so."""
    state = _initial_state(config, mesh)
    packing = _packing(config, what, state)
    if packing is None:
        return state, None
    return jax.jit(packing.pack, out_shardings=meshlib.replicated(mesh))(state), packing


def _packing(config: Any, what: str, state: Any) -> StatePacking | None:
    return StatePacking(state) if what == "train" and pack_state_enabled(config) else None


def _abstract_inputs(config: Any, what: str, batch_size: int, mesh, state: nnx.State
                     ) -> tuple[Any, dict[str, jax.ShapeDtypeStruct], StatePacking | None]:
    """(state, batch, packing) as :func:`stepped_state` and :func:`random_batch` make
    them, from the abstract ``state``: shapes and shardings only, for a mesh of a GPU
    that is not here."""
    packing = _packing(config, what, state)
    if packing is not None:
        state = jax.eval_shape(packing.pack, state)
    rep, sharded = meshlib.replicated(mesh), meshlib.batch_sharded(mesh)
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharded)
             for k, v in random_batch(config, batch_size).items()}
    return state, batch, packing


def _model_flops(config: Any, what: str, batch: dict[str, jax.Array], mesh) -> float:
    """Analytic FLOPs of the step, traced on an abstract model whose depthwise layers are
    grouped convolutions (whatever implementation the run uses), so the figure is the
    network's arithmetic."""
    config = config.copy_and_resolve_references()
    if "depthwise" in config.model:
        config.model.depthwise = "conv"
    graphdef, state, _ = abstract_state(config)
    return float(count_flops(make_step(config, what, graphdef, mesh), state, batch).total)


def _peak_bytes() -> int | None:
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [s["peak_bytes_in_use"] for s in stats if s and "peak_bytes_in_use" in s]
    return max(peaks) if peaks else None


def xla_memory_bytes(compiled: Any) -> int | None:
    """XLA's memory plan of a compiled program: arguments + outputs + temporaries - aliased."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)


@dataclasses.dataclass
class Timing:
    """Seconds per step of each run, (user, system) CPU seconds per step of each run,
    every timed step's wall time, and every step's dispatch time (host)."""

    runs: list[float]
    cpu: list[tuple[float, float]]
    steps: list[float]
    dispatch: list[float]


def _finished_times(outputs: "queue.Queue", count: int, times: list[float]) -> None:
    for _ in range(count):
        jax.block_until_ready(outputs.get())
        times.append(time.perf_counter())


def _time(compiled, state, batch, *, steps: int, repeats: int, carries_state: bool,
          budget_s: float | None = None) -> Timing:
    """``repeats`` runs of ``steps`` steps after two warm-up steps, dispatched back to
    back as training does. A waiter thread notes when each step's outputs are ready (the
    metrics: the state is donated to the next step), so every step's wall time is
    measured without a synchronisation that would stall the pipeline. With ``budget_s``,
    fewer steps per run (at least one) when the second warm-up step says that ``steps``
    would not fit: a pathologically slow point is still measured, briefly."""
    out = None
    for _ in range(2):
        t0 = time.perf_counter()
        out = compiled(state, batch)
        state = out[0] if carries_state else state
        jax.block_until_ready(out)
        warm_s = time.perf_counter() - t0
    if budget_s is not None:
        steps = max(1, min(steps, int(budget_s / (repeats * warm_s))))
    timing = Timing([], [], [], [])
    for _ in range(repeats):
        outputs: queue.Queue = queue.Queue()
        finished: list[float] = []
        waiter = threading.Thread(target=_finished_times, args=(outputs, steps, finished), daemon=True)
        waiter.start()
        clock, t0 = CpuClock(), time.perf_counter()
        for _ in range(steps):
            d0 = time.perf_counter()
            out = compiled(state, batch)
            timing.dispatch.append(time.perf_counter() - d0)
            outputs.put(out[1] if carries_state else out)
            state = out[0] if carries_state else state
        waiter.join()
        jax.block_until_ready(out)
        timing.runs.append((finished[-1] - t0) / steps)
        timing.cpu.append(tuple(x / steps for x in clock.lap()))
        timing.steps += list(np.diff([t0, *finished]))
    return timing


@dataclasses.dataclass
class PreparedStep:
    """The ``what`` step of a config, ready to lower: its mesh, global batch size,
    parameter count, the state and a random batch it takes, and the jitted step."""

    mesh: Any
    batch_size: int
    params: int
    state: Any
    batch: dict[str, jax.Array]
    step: Any
    build_s: float  # building the model and optimizer abstractly (one trace of their construction)

    def compile(self) -> tuple[Any, Any, float, float]:
        """(lowered, compiled, seconds lowering, seconds in all) of the step."""
        t0 = time.perf_counter()
        lowered = self.step.lower(self.state, self.batch)
        lower_s = time.perf_counter() - t0
        compiled = lowered.compile()
        return lowered, compiled, lower_s, time.perf_counter() - t0


def prepare_step(config: Any, what: str, target_mesh: Any = None) -> PreparedStep:
    """``config``'s ``what`` ("train" or "eval") step on every device of the mesh, at its
    ``batch_size`` (train) or ``eval_batch_size`` (eval), with a random state and batch;
    with ``target_mesh`` (:func:`vertex_jax.bench.gpu_target.target_mesh`) on that GPU's
    mesh, the state and batch abstract: for compiling only."""
    mesh = target_mesh if target_mesh is not None else meshlib.make_mesh()
    batch_size = config.batch_size if what == "train" else config.eval_batch_size
    meshlib.check_batch(batch_size, mesh)
    t0 = time.perf_counter()
    graphdef, abstract, params = abstract_state(config)
    build_s = time.perf_counter() - t0
    if target_mesh is not None:
        state, batch, packing = _abstract_inputs(config, what, batch_size, mesh, abstract)
    else:
        state, packing = stepped_state(config, what, mesh)
        batch = meshlib.to_global(random_batch(config, batch_size), mesh)
    return PreparedStep(mesh, batch_size, params, state, batch, make_step(config, what, graphdef, mesh, packing),
                        build_s)


def measure(config: Any, what: str, *, steps: int, repeats: int,
            options: dict[str, Any] | None = None,
            on_compiled: Callable[[float], None] | None = None,
            budget_s: float | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(environment, record) for the ``what`` ("train" or "eval") step of ``config`` at
    its ``batch_size`` (train) or ``eval_batch_size`` (eval); ``on_compiled(seconds)``
    is called once the step is compiled, before it runs; ``budget_s`` caps the timed
    runs (:func:`_time`; the record's ``step_s_each`` shows how many steps ran)."""
    if what not in ("train", "eval"):
        raise ConfigError(f"what must be 'train' or 'eval', got {what!r}")
    config = config.copy_and_resolve_references()
    point = prepare_step(config, what)
    mesh, batch_size, params, state, batch = point.mesh, point.batch_size, point.params, point.state, point.batch
    model_flops = _model_flops(config, what, batch, mesh)
    lowered, compiled, lower_s, compile_s = point.compile()
    if on_compiled is not None:
        on_compiled(compile_s)
    cost = compiled.cost_analysis() or {}
    timing = _time(compiled, state, batch, steps=steps, repeats=repeats, carries_state=what == "train",
                   budget_s=budget_s)
    devices = mesh.devices.size

    def whole_step(key: str) -> float | None:  # cost analysis is of one device's program
        return cost[key] * devices if key in cost else None
    record = make_record(
        framework="jax", what=what, variant=config.model.variant, height=config.data.canvas[0],
        width=config.data.canvas[1], batch=batch_size, dtype=config.model.dtype,
        remat=bool(config.model.remat), options=dict(options or {}), devices=devices,
        params=params, compile_s=compile_s, lower_s=lower_s, step_s_runs=timing.runs,
        model_flops=model_flops, xla_flops=whole_step("flops"), xla_bytes=whole_step("bytes accessed"),
        peak_bytes=_peak_bytes(), xla_memory_bytes=xla_memory_bytes(compiled), cpu_s_runs=timing.cpu,
        step_s_each=timing.steps, dispatch_s_each=timing.dispatch)
    return environment(), record


def _with_compilation_cache(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    enable_compilation_cache()  # a spawned process starts with JAX's defaults: no cache
    return fn(*args, **kwargs)


def run_isolated(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a fresh (spawned) process, its result returned here; the
    process uses the compilation cache as the entry points do (``VERTEX_COMPILE_CACHE``)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_with_compilation_cache, fn, *args, **kwargs).result()


def measure_isolated(config: Any, what: str, **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`measure` in a fresh process, so its peak memory and compile time are its own
    (allocator peaks never reset within a process). This process never touches a device."""
    return run_isolated(measure, config, what, **kwargs)

"""A cold compile of the training (or evaluation) step, nothing run:
``python -m vertex_jax.bench --what=compile`` (``compile-eval``).

The first compile is paid by every fresh machine, so its levers are measured apart from
the step's speed: the persistent compilation cache is off for the point (each point runs
in a fresh process), and the record splits the time into tracing + lowering in Python
(``lower_s``) and XLA (``xla_s``: HLO passes, code generation and, on GPUs, autotuning);
``build_s``, before it, builds the model and optimizer abstractly (the trace of their
construction every run's initialisation makes once). Beside them: the program's size
(StableHLO operations in, kernels of the compiled entry computation out, with the bytes
they move and the library calls autotuning times, :mod:`vertex_jax.bench.hlo_kernels`)
and XLA's memory plan (arguments + outputs + temporaries - aliased).
Sizes are counted from the program text, so they compare settings on one backend; XLA:CPU and XLA:GPU fuse differently.
For a described GPU the record also has ``xla_phases``: XLA's largest phases of the compile
(:mod:`vertex_jax.bench.compile_phases`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from vertex_jax.auto_setting import assume_accelerator
from vertex_jax.bench.compile_phases import traced_compile
from vertex_jax.bench.gpu_target import target_mesh
from vertex_jax.bench.hlo_kernels import kernel_summary
from vertex_jax.bench.measure import xla_memory_bytes, environment, prepare_step
from vertex_jax.bench.record import format_table

__all__ = ["measure_compile", "program_sizes", "format_compile_table"]

def program_sizes(stablehlo: str, compiled_hlo: str) -> dict[str, Any]:
    """``stablehlo_ops``: operations of the lowered module (every function); from the
    compiled entry computation (:func:`vertex_jax.bench.hlo_kernels.kernel_summary`):
    ``kernels``, their estimated ``kernel_bytes``, the ``library_calls`` and how many
    distinct ``library_problems`` autotuning times."""
    ops = sum(1 for line in stablehlo.splitlines() if " = " in line and not line.lstrip().startswith("//"))
    return {"stablehlo_ops": ops, **kernel_summary(compiled_hlo)}


def measure_compile(config: Any, *, options: dict[str, Any] | None = None, target: str = "",
                    step: str = "train") -> tuple[dict[str, Any], dict[str, Any]]:
    """(environment, record) of one cold compile of ``config``'s ``step`` ("train" at its
    ``batch_size``, or "eval" at its ``eval_batch_size``), on every device of the mesh;
    the persistent cache is switched off for this process, so run it in a fresh one (``run_isolated``) for a cold figure.
    ``target`` (``h100``, ``h200``): compiled for that GPU, described, not present
    (:mod:`vertex_jax.bench.gpu_target`); ``auto`` settings take their GPU form."""
    jax.config.update("jax_enable_compilation_cache", False)
    config = config.copy_and_resolve_references()
    mesh = target_mesh(target) if target else None
    if target:
        assume_accelerator(True)
    try:
        point = prepare_step(config, step, mesh)
        # A described GPU runs nothing, so XLA's trace of the compile costs no device tracing.
        (lowered, compiled, lower_s, compile_s), phases = (traced_compile(point.compile) if target
                                                            else (point.compile(), None))
    finally:
        if target:
            assume_accelerator(None)  # the GPU forms only for this program
    xla_s = compile_s - lower_s
    env = environment()
    if target:
        env.update(device=f"{target} (described: compiled here, never run)", platform="cuda",
                   devices=point.mesh.devices.size)
    record = {
        "framework": "jax", "what": "compile" if step == "train" else f"compile-{step}",
        "target": target or None, "variant": config.model.variant,
        "height": config.data.canvas[0], "width": config.data.canvas[1], "batch": point.batch_size,
        "dtype": config.model.dtype, "options": dict(options or {}), "devices": point.mesh.devices.size,
        "params": point.params, "build_s": point.build_s,
        "compile_s": compile_s, "lower_s": lower_s, "xla_s": xla_s,
        **program_sizes(lowered.as_text(), compiled.as_text()),
        "xla_memory_bytes_per_device": xla_memory_bytes(compiled), "xla_phases": phases,
    }
    return env, record


_COLUMNS = (
    ("what", "what", "", 1), ("batch", "batch", "d", 1), ("dtype", "dtype", "", 1),
    ("build s", "build_s", ".1f", 1), ("compile s", "compile_s", ".1f", 1), ("lower s", "lower_s", ".1f", 1),
    ("XLA s", "xla_s", ".1f", 1),
    ("StableHLO ops", "stablehlo_ops", "d", 1), ("kernels", "kernels", "d", 1),
    ("kernel GB", "kernel_bytes", ".1f", 1e9), ("library problems", "library_problems", "d", 1),
    ("XLA MiB/dev", "xla_memory_bytes_per_device", ".0f", 2**20),
)


def format_compile_table(records: Sequence[dict[str, Any]]) -> str:
    """One line per compile record: seconds in Python and in XLA, program sizes, options;
    then, for a described GPU, XLA's largest phases (:mod:`vertex_jax.bench.compile_phases`)."""
    lines = [format_table(records, extra=sorted({k for r in records for k in r["options"]}), columns=_COLUMNS)]
    for r in records:
        if r.get("xla_phases"):
            label = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "as configured"
            phases = "; ".join(f"{p['name']} {p['s']:.1f} s" + (f" x{p['count']}" if p["count"] > 1 else "")
                               for p in r["xla_phases"][:10])
            lines.append(f"XLA's largest phases ({label}; summed over threads, nested included): {phases}")
    return "\n".join(lines)

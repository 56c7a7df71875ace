"""A memory plan without a GPU: XLA's compiled memory analysis of the training step.

    python -m vertex_jax.bench.gpu_check --memory-plan [--batches 2,4] [--json out.json]

Compiles (never runs) the training step on this backend for a few batch sizes, with and
without remat, and fits XLA's planned bytes (arguments + outputs + temporaries - aliased)
as fixed + per-image, then the largest batch that fits each device's memory. On CPU it
is XLA:CPU's buffer plan, an estimate of the GPU's.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

from vertex_jax.bench.plain_config import point_config
from vertex_jax.bench.residuals import saved_activation_bytes
from vertex_jax.errors import ConfigError

__all__ = ["DEVICE_MEMORY", "fit_memory", "largest_batch", "memory_plan", "print_plan"]

# Device memory (nvidia-smi's memory.total) of the cards the plan is sized for.
DEVICE_MEMORY = {"H100 80GB": 81559 * 2**20, "H200 141GB": 143771 * 2**20}
JAX_DEFAULT_FRACTION = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default


def fit_memory(batches: Sequence[int], totals: Sequence[int]) -> dict[str, float]:
    """Least-squares ``total = fixed + per_image × batch``."""
    n = len(batches)
    mean_b, mean_t = sum(batches) / n, sum(totals) / n
    var = sum((b - mean_b) ** 2 for b in batches)
    per_image = sum((b - mean_b) * (t - mean_t) for b, t in zip(batches, totals)) / var
    fixed = mean_t - per_image * mean_b
    worst = max(abs(fixed + per_image * b - t) / t for b, t in zip(batches, totals))
    return {"per_image_bytes": per_image, "fixed_bytes": fixed, "max_relative_residual": worst}


def largest_batch(fit: dict[str, float], capacity: float) -> int:
    return max(0, math.floor((capacity - fit["fixed_bytes"]) / fit["per_image_bytes"]))


# LLVM's optimisation level does not change XLA's buffer assignment (checked on the first
# point of every plan) and halves XLA:CPU's compile time.
_PLAN_OPTIONS = {"xla_backend_optimization_level": 0}
_BUFFERS = ("argument", "output", "alias", "temp")


def _analysis(compiled: Any) -> dict[str, int]:
    """Sizes of ``compiled.memory_analysis()`` in bytes."""
    m = compiled.memory_analysis()
    return {k: int(getattr(m, f"{k}_size_in_bytes")) for k in (*_BUFFERS, "generated_code")}


def memory_plan(spec: str, batches: Sequence[int], dtype: str) -> dict[str, Any]:
    """XLA's compiled memory analysis of the training step at ``batches``, remat off and
    on, with grouped-convolution depthwise layers (GPU's "auto"); nothing is executed."""
    import jax
    from vertex_jax import mesh as meshlib
    from vertex_jax.bench.measure import abstract_state, environment, make_step, random_batch

    if len(set(batches)) < 2:
        raise ConfigError(f"--batches: at least two sizes to fit, got {list(batches)}")
    mesh = meshlib.make_mesh()
    out: dict[str, Any] = {"batches": list(batches), "remat": {},
                           "compile_options": _PLAN_OPTIONS}
    verify = True
    for remat in (False, True):
        rows = []
        for b in batches:
            config = point_config(spec, batch=b, remat=remat, dtype=dtype, depthwise="conv")
            graphdef, state, params = abstract_state(config)
            batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                 random_batch(config, b))
            lowered = make_step(config, "train", graphdef, mesh).lower(state, batch)
            t0 = time.perf_counter()
            row = {"batch": b, "params": params, **_analysis(lowered.compile(_PLAN_OPTIONS))}
            row["compile_s"] = time.perf_counter() - t0
            if verify:  # once: the plan must not depend on the backend's optimisation level
                full = _analysis(lowered.compile())
                row["full_optimisation_matches"] = all(full[k] == row[k] for k in _BUFFERS)
                verify = False
            row["total_bytes"] = row["argument"] + row["output"] + row["temp"] - row["alias"]
            row["saved_activation_bytes"] = saved_activation_bytes(config, b)
            rows.append(row)
            print(f"[memory-plan] remat={remat} batch={b}: {row['total_bytes'] / 2**30:.2f} GiB "
                  f"(temp {row['temp'] / 2**30:.2f} GiB), compiled in {row['compile_s']:.0f} s", flush=True)
        fit = fit_memory([r["batch"] for r in rows], [r["total_bytes"] for r in rows])
        fit["saved_activation_bytes_per_image"] = fit_memory(
            [r["batch"] for r in rows], [r["saved_activation_bytes"] for r in rows])["per_image_bytes"]
        fit["largest_batch"] = {name: largest_batch(fit, cap) for name, cap in DEVICE_MEMORY.items()}
        fit["largest_batch_at_jax_default_fraction"] = {
            name: largest_batch(fit, cap * JAX_DEFAULT_FRACTION) for name, cap in DEVICE_MEMORY.items()}
        out["remat"][str(remat).lower()] = {"points": rows, "fit": fit}
    config = point_config(spec, batch=batches[0], remat=False, dtype=dtype)
    out.update(variant=config.model.variant, canvas=list(config.data.canvas), dtype=dtype,
               depthwise="conv", device_memory_bytes=DEVICE_MEMORY,
               jax_default_fraction=JAX_DEFAULT_FRACTION, environment=environment(),
               note=f"XLA's compiled memory analysis on {jax.devices()[0].platform}: the buffer "
                    "plan of that backend's program (arguments + outputs + temporaries - "
                    "aliased), not a GPU allocator's peak" + (
                        "; XLA:CPU's plan is an estimate of the GPU's (other fusion, other "
                        "convolution layouts and workspaces)" if jax.devices()[0].platform
                        == "cpu" else ""))
    return out


def print_plan(plan_doc: dict[str, Any]) -> None:
    for remat, part in plan_doc["remat"].items():
        fit = part["fit"]
        sizes = ", ".join(f"{k}: {v}" for k, v in fit["largest_batch"].items())
        print(f"remat={remat}: {fit['per_image_bytes'] / 2**30:.3f} GiB per image + "
              f"{fit['fixed_bytes'] / 2**30:.3f} GiB fixed (fit residual "
              f"{fit['max_relative_residual']:.1%}); largest batch {sizes}; saved activations "
              f"{fit['saved_activation_bytes_per_image'] / 2**30:.3f} GiB per image")

"""The benchmark's result format, shared by the JAX bench and the PyTorch peer (no JAX import).

A result file is ``{"command", "environment", "records", ...}``; each record is one
measured configuration (one sweep point) with the fields of :data:`FIELDS`. Rates per
device divide by ``devices``; ``images_per_s`` is for all devices together. Fields a
framework or platform cannot measure are ``None`` (JSON null), never guessed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import sys
from typing import Any, Iterable, Sequence

from vertex_jax.train.metrics import CpuClock  # noqa: F401  (re-exported: the peer and the bench time with it)

__all__ = ["FIELDS", "CpuClock", "make_record", "versions", "host", "document", "format_table"]

FIELDS = (
    "framework", "what", "variant", "height", "width", "batch", "dtype", "remat", "options",
    "devices", "params", "compile_s", "lower_s", "step_s", "step_s_runs", "run_spread", "step_s_each",
    "dispatch_s", "images_per_s",
    "model_flops_per_step", "model_tflops_per_s_per_device",
    "xla_flops_per_step", "xla_tflops_per_s_per_device",
    "xla_bytes_per_step", "xla_gb_per_s_per_device",
    "peak_bytes_per_device", "xla_memory_bytes_per_device",
    "cpu_user_s_per_step", "cpu_system_s_per_step",
)


def _rate(amount: float | None, seconds: float, devices: int, unit: float) -> float | None:
    return None if amount is None else amount / seconds / devices / unit


def make_record(*, framework: str, what: str, variant: str, height: int, width: int, batch: int,
                dtype: str, remat: bool, options: dict[str, Any], devices: int, params: int | None,
                compile_s: float | None, step_s_runs: Sequence[float], model_flops: float | None,
                lower_s: float | None = None,
                xla_flops: float | None = None, xla_bytes: float | None = None,
                peak_bytes: int | None = None, xla_memory_bytes: int | None = None,
                cpu_s_runs: Sequence[tuple[float, float]] = (), step_s_each: Sequence[float] = (),
                dispatch_s_each: Sequence[float] = ()) -> dict[str, Any]:
    """One sweep point; ``step_s`` is the median of ``step_s_runs``; FLOPs and bytes per
    step are for the whole (global) step; ``cpu_s_runs``: (user, system) CPU seconds per
    step of each run, reported as medians. ``run_spread`` is (slowest - fastest run) /
    median; ``step_s_each`` every timed step's wall time (when measured), ``dispatch_s``
    the median host time of one step's dispatch (the call returning, not the step);
    ``lower_s`` the share of ``compile_s`` spent tracing and lowering to StableHLO in
    Python (the rest is XLA's compile, its autotuning included, or a cache load)."""
    step_s = statistics.median(step_s_runs)
    record = {
        "framework": framework, "what": what, "variant": variant, "height": height, "width": width,
        "batch": batch, "dtype": dtype, "remat": remat, "options": options, "devices": devices,
        "params": params, "compile_s": compile_s, "lower_s": lower_s, "step_s": step_s, "step_s_runs": list(step_s_runs),
        "run_spread": (max(step_s_runs) - min(step_s_runs)) / step_s,
        "step_s_each": list(step_s_each) or None,
        "dispatch_s": statistics.median(dispatch_s_each) if dispatch_s_each else None,
        "images_per_s": batch / step_s,
        "model_flops_per_step": model_flops,
        "model_tflops_per_s_per_device": _rate(model_flops, step_s, devices, 1e12),
        "xla_flops_per_step": xla_flops,
        "xla_tflops_per_s_per_device": _rate(xla_flops, step_s, devices, 1e12),
        "xla_bytes_per_step": xla_bytes,
        "xla_gb_per_s_per_device": _rate(xla_bytes, step_s, devices, 1e9),
        "peak_bytes_per_device": peak_bytes, "xla_memory_bytes_per_device": xla_memory_bytes,
        "cpu_user_s_per_step": statistics.median(u for u, _ in cpu_s_runs) if cpu_s_runs else None,
        "cpu_system_s_per_step": statistics.median(s for _, s in cpu_s_runs) if cpu_s_runs else None,
    }
    assert tuple(record) == FIELDS
    return record


def versions(distributions: Iterable[str]) -> dict[str, str | None]:
    """Installed versions of ``distributions`` (None if absent) and of Python."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in distributions:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def host() -> dict[str, Any]:
    """The machine: OS, CPU count and load averages (1, 5, 15 min; others' work on a
    shared machine shows here)."""
    return {"machine": platform.platform(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}


def document(environment: dict[str, Any], records: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A result file: the exact command line, the environment, the records, extras."""
    return {"command": [sys.executable, *sys.argv], "environment": environment,
            "records": records, **extra}


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


# (header, record field, format, scale)
_COLUMNS = (
    ("framework", "framework", "", 1), ("what", "what", "", 1), ("batch", "batch", "d", 1),
    ("dtype", "dtype", "", 1), ("remat", "remat", "", 1),
    ("images/s", "images_per_s", ".3g", 1), ("ms/step", "step_s", ".1f", 1e-3),
    ("spread", "run_spread", ".1%", 1), ("dispatch ms", "dispatch_s", ".2f", 1e-3),
    ("compile s", "compile_s", ".1f", 1), ("model GFLOP", "model_flops_per_step", ".4g", 1e9),
    ("XLA GFLOP", "xla_flops_per_step", ".4g", 1e9),
    ("model TFLOP/s/dev", "model_tflops_per_s_per_device", ".3g", 1),
    ("XLA GB/s/dev", "xla_gb_per_s_per_device", ".1f", 1),
    ("peak MiB/dev", "peak_bytes_per_device", ".0f", 2**20),
    ("XLA MiB/dev", "xla_memory_bytes_per_device", ".0f", 2**20),
    ("user s/step", "cpu_user_s_per_step", ".3f", 1), ("sys s/step", "cpu_system_s_per_step", ".3f", 1),
)


def format_table(records: Sequence[dict[str, Any]], extra: Sequence[str] = (),
                 columns: Sequence[tuple[str, str, str, float]] = _COLUMNS) -> str:
    """A fixed-width table of ``records``; ``extra`` names ``options`` keys to show too;
    ``columns``: (header, record field, format, scale) each."""
    headers = [h for h, *_ in columns] + list(extra)
    rows = []
    for r in records:
        row = [_cell(None if r[key] is None else (r[key] / scale if scale != 1 else r[key]), fmt)
               for _, key, fmt, scale in columns]
        rows.append(row + [str(r["options"].get(k, "-")) for k in extra])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)

"""The top XLA operations of a ``jax.profiler`` trace: by op, by op kind, by GPU kernel;
and, given the traced program's kernels (:mod:`vertex_jax.bench.hlo_kernels`), the time
and estimated bytes of each kind of kernel, which calibrates the byte estimates that a
described GPU's program gives (docs/performance-notes.md §12)."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vertex_jax.bench.hlo_kernels import Kernel, op_kind

__all__ = ["summarize_trace"]


def _xplane_events(path: Path) -> tuple[list[tuple[str, str, int]], str]:
    """(op, event name, duration ns) of every XLA op event in an ``.xplane.pb``: the GPU
    kernels of the device planes (op: their ``hlo_op`` stat, else the kernel name), or
    else the host's events with an ``hlo_op`` stat (XLA:CPU); and which it was."""
    from jax.profiler import ProfileData

    planes = list(ProfileData.from_file(str(path)).planes)
    device = [p for p in planes if p.name.startswith("/device:") and "CUSTOM" not in p.name]
    for chosen, source, need_op in ((device, "device", True), (device, "device kernels", False),
                                    (planes, "host", True)):
        seen, out = set(), []
        for plane in chosen:
            for line in plane.lines:
                if not need_op and not line.name.startswith("Stream"):
                    continue
                for event in line.events:
                    op = dict(event.stats).get("hlo_op") if need_op else event.name
                    key = (plane.name, event.name, event.start_ns, event.duration_ns)
                    if op and key not in seen:  # one kernel can sit on two stream lines
                        seen.add(key)
                        out.append((str(op), str(event.name), int(event.duration_ns)))
        if out:
            return out, source
    return [], "none"


def _trace_json_events(path: Path) -> tuple[list[tuple[str, str, int]], str]:
    """The same from a ``*.trace.json.gz`` (Chrome trace format) the profiler writes."""
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    out = []
    for event in trace.get("traceEvents", []):
        args = event.get("args") or {}
        op = args.get("hlo_op") or args.get("long_name")
        if op and "dur" in event:
            out.append((str(op), str(event.get("name", op)), int(float(event["dur"]) * 1000)))
    return out, "trace.json"


def _bytes_and_time(events: list[tuple[str, str, int]], kernels: Sequence[Kernel], steps: int
                    ) -> dict[str, Any]:
    """Per kind of the program's kernels that the trace names: traced ms per step, their
    estimated GB per step and the ratio (GB/s; None without time); the share of traced time
    matched, and the estimated GB of kernels the trace does not name (inside CUDA graphs,
    say), left out of the ratios."""
    by_name = {k.name.lstrip("%"): k for k in kernels}
    ns: dict[str, int] = defaultdict(int)
    seen: set[str] = set()
    matched = 0
    for op, _, duration in events:
        kernel = by_name.get(op)
        if kernel is not None:
            ns[kernel.kind] += duration
            matched += duration
            seen.add(op)
    gb: dict[str, float] = defaultdict(float)
    for name in seen:
        k = by_name[name]
        gb[k.kind] += (k.bytes_in + k.bytes_out) / 1e9
    rows = [{"kind": kind, "ms_per_step": ns[kind] / 1e6 / steps, "est_gb_per_step": gb[kind],
             "est_gb_per_s": gb[kind] / (ns[kind] / 1e9 / steps) if ns[kind] else None}
            for kind in sorted(ns, key=ns.get, reverse=True)]
    total = sum(d for _, _, d in events)
    unmatched = sum(k.bytes_in + k.bytes_out for name, k in by_name.items() if name not in seen) / 1e9
    return {"matched_share": matched / total if total else 0.0, "est_gb_per_step": sum(gb.values()),
            "unmatched_est_gb_per_step": unmatched, "by_kind": rows}


def summarize_trace(trace_dir: Path, steps: int, top: int = 15, kernels: Sequence[Kernel] = ()
                    ) -> dict[str, Any]:
    """Top XLA ops (and op kinds, and GPU kernels) by time in the profile under
    ``trace_dir``, and with the traced program's ``kernels`` their bytes against their
    time (``bytes_and_time``); errors are recorded, never raised."""
    errors = []
    for pattern, reader in (("*.xplane.pb", _xplane_events), ("*.trace.json.gz", _trace_json_events)):
        for path in sorted(trace_dir.rglob(pattern)):
            try:
                events, source = reader(path)
            except Exception as e:  # noqa: BLE001 - a failed parse is a finding, not a crash
                errors.append(f"{path.name}: {e!r}")
                continue
            if not events:
                errors.append(f"{path.name}: no XLA op events")
                continue
            total = sum(d for _, _, d in events)

            def rank(key_of) -> list[dict[str, Any]]:
                ns, count = defaultdict(int), defaultdict(int)
                for event in events:
                    ns[key_of(event)] += event[2]
                    count[key_of(event)] += 1
                best = sorted(ns, key=ns.get, reverse=True)[:top]
                return [{"name": k, "count": count[k], "ms_per_step": ns[k] / 1e6 / steps,
                         "share": ns[k] / total} for k in best]
            summary = {"status": "ok", "source": f"{source} ({path.name})", "steps": steps,
                       "events": len(events), "op_ms_per_step": total / 1e6 / steps,
                       "top_ops": rank(lambda e: e[0]), "top_kinds": rank(lambda e: op_kind(e[0]))}
            if source.startswith("device"):
                summary["top_kernels"] = rank(lambda e: e[1])
            if kernels:
                summary["bytes_and_time"] = _bytes_and_time(events, kernels, steps)
            return {**summary, "errors": errors}
    return {"status": "error", "errors": errors or [f"no trace files under {trace_dir}"]}

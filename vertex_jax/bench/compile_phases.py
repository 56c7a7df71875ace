"""Where XLA's compile time goes: its own trace events of one compile, summed by name.

XLA marks its phases for the profiler (``HLO Transforms``, each HLO pass such as
``priority-fusion``, ``autotuner``, ``CompileSingleModule`` and ``PTX->CUBIN`` per kernel
module on its thread pool, ...). :func:`traced_compile` compiles under
``jax.profiler.trace`` with Python's tracer off and sums each name's events over every
thread: a phase that runs on several threads can exceed the compile's wall time, and a
phase includes the phases nested in it. The names are XLA's and change between releases,
so they are reported as they come, largest first.
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["traced_compile"]


def traced_compile(compile_fn: Callable[[], Any], top: int = 15) -> tuple[Any, list[dict[str, Any]]]:
    """(``compile_fn()``, its ``top`` trace events by summed duration: ``name``, ``s`` (summed
    over threads), ``count``)."""
    import jax
    from jax.profiler import ProfileData, ProfileOptions

    options = ProfileOptions()
    options.python_tracer_level = 0  # XLA's own events only, no Python frames
    with tempfile.TemporaryDirectory(prefix="vertex_compile_trace_") as folder:
        with jax.profiler.trace(folder, profiler_options=options):
            result = compile_fn()
        seconds: collections.Counter[str] = collections.Counter()
        count: collections.Counter[str] = collections.Counter()
        for path in Path(folder).rglob("*.xplane.pb"):
            for plane in ProfileData.from_file(str(path)).planes:
                if plane.name.startswith("/device:"):
                    continue
                for line in plane.lines:
                    for event in line.events:
                        seconds[event.name] += event.duration_ns / 1e9
                        count[event.name] += 1
    return result, [{"name": name, "s": s, "count": count[name]} for name, s in seconds.most_common(top)]

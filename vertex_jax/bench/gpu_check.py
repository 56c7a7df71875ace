"""One-shot GPU check and a memory plan without a GPU.

    python -m vertex_jax.bench.gpu_check [--json out.json] [--budget-s 420] [--points a,b]
    python -m vertex_jax.bench.gpu_check --dry [--json out.json]     # CPU, tiny, seconds
    python -m vertex_jax.bench.gpu_check --memory-plan [--batches 2,4] [--json out.json]

The check (``benchmarks/gpu_check.sh`` runs it on a lent GPU) measures EfficientNet-B4 +
clinical fusion at 1024×512 in bfloat16 (``configs/xray.py`` with ``model.dtype`` and
``model.remat`` set): the training step at batch 16/32/48 with remat off and on and the
evaluation step (:func:`vertex_jax.bench.measure.measure`: compile time, images/s,
FLOPs, peak memory, XLA's memory plan), the PyTorch peer (``benchmarks/torch_peer.py``
through :func:`vertex_jax.bench.peer.peer_command`: eager, channels-last, torch.compile),
the training loop when the bench has one (``python -m vertex_jax.bench --what loop``) and
a short ``jax.profiler`` trace summarised as the top XLA ops by time. Every point runs
in its own time-boxed process, in priority order, while the budget lasts; points that do
not fit are recorded as skipped (rerun them with ``--points``). One JSON holds the
device, versions, command, records and every point's status.

The lent machine lacks ml-collections, grain and pydicom, so nothing here needs them: the
run config is ``configs/xray.py`` executed with a small ConfigDict stand-in when
ml_collections is missing (:func:`load_run_config`). ``--dry`` blocks those packages, uses
the ``tiny`` config at batch 2 and one step, so CPU tests keep this path working.

``--memory-plan`` compiles (never runs) the training step on this backend for a few batch
sizes, with and without remat, and fits XLA's planned bytes (arguments + outputs +
temporaries - aliased) as fixed + per-image, then the largest batch that fits each
device's memory. On CPU it is XLA:CPU's buffer plan, an estimate of the GPU's.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import copy
import dataclasses
import functools
import gzip
import importlib.abc
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Sequence

__all__ = ["PlainConfig", "plain_config", "load_run_config", "block_imports", "Point", "plan", "summarize_trace",
           "memory_plan", "fit_memory", "main"]

CHECKOUT = Path(__file__).resolve().parents[2]
MISSING_ON_DEVICE = ("grain", "array_record", "ml_collections", "pydicom", "tensorboardX")
# Device memory (nvidia-smi's memory.total) of the cards the plan is sized for.
DEVICE_MEMORY = {"H100 80GB": 81559 * 2**20, "H200 141GB": 143771 * 2**20}
JAX_DEFAULT_FRACTION = 0.75  # XLA_PYTHON_CLIENT_MEM_FRACTION's default


# --------------------------------------------------------------------------- config

class PlainConfig(dict):
    """A stand-in for ``ml_collections.ConfigDict``: a dict whose (nested) fields are
    also attributes, enough for ``configs/*.py`` and the code that reads a run config."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, PlainConfig(value) if isinstance(value, dict)
                            and not isinstance(value, PlainConfig) else value)

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __deepcopy__(self, memo: dict) -> "PlainConfig":
        return PlainConfig({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def copy_and_resolve_references(self) -> "PlainConfig":
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, PlainConfig) else v for k, v in self.items()}


def plain_config(spec: str) -> PlainConfig:
    """``path[:variant]``'s ``get_config`` run with :class:`PlainConfig` standing in for
    ``ml_collections.ConfigDict`` (the file's ``import ml_collections`` gets the stand-in)."""
    path, sep, arg = spec.partition(":")
    file = Path(path) if Path(path).is_file() else CHECKOUT / path
    shim = ModuleType("ml_collections")
    shim.ConfigDict = PlainConfig
    real_import = builtins.__import__

    def _import(name: str, *args: Any, **kwargs: Any) -> Any:
        return shim if name == "ml_collections" else real_import(name, *args, **kwargs)
    namespace = {"__builtins__": {**vars(builtins), "__import__": _import},
                 "__name__": "vertex_jax_plain_config", "__file__": str(file)}
    exec(compile(file.read_text(), str(file), "exec"), namespace)
    return namespace["get_config"](*((arg,) if sep else ()))


def load_run_config(spec: str) -> tuple[Any, str]:
    """(config, loader) for ``path[:variant]`` (``configs/xray.py:tiny``): with
    ml_collections when it imports, else :func:`plain_config` (loader ``"plain"``)."""
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        return plain_config(spec), "plain"
    from vertex_jax.config_files import load_config
    return load_config(spec), "ml_collections"


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: absent on the lent GPU "
                                      f"machine)", name=name)
        return None


def block_imports(names: Iterable[str] = MISSING_ON_DEVICE) -> None:
    """Make ``names`` unimportable in this process, as on the lent machine."""
    for name in names:
        if name in sys.modules and sys.modules[name] is not None:
            raise RuntimeError(f"{name} is already imported; block it before importing the project")
    sys.meta_path.insert(0, _Blocker(names))


def point_config(spec: str, *, batch: int, remat: bool, dtype: str, depthwise: str = "") -> Any:
    """The run config of one measured point (``depthwise``: keep the config's if empty)."""
    config, _ = load_run_config(spec)
    config.model.dtype = dtype
    config.model.remat = remat
    if depthwise:
        config.model.depthwise = depthwise
    config.batch_size = config.eval_batch_size = batch
    return config


# --------------------------------------------------------------------------- plan

@dataclasses.dataclass
class Point:
    """One measurement, run in its own process: kind ``jax`` (train/eval step),
    ``profile`` (a traced training step), ``peer`` (the PyTorch peer) or ``loop``."""

    name: str
    kind: str
    what: str = "train"
    batch: int = 32
    remat: bool = False
    peer_flags: str = ""
    cap_s: float = 150.0

    @property
    def category(self) -> str:
        """Points of one category take about as long (the budget's estimates)."""
        return (f"peer-{'compile' if '--compile' in self.peer_flags else 'eager'}"
                if self.kind == "peer" else f"{self.kind}-{self.what}")


def plan(dry: bool) -> list[Point]:
    """Every point, most important first (what runs first survives a short budget)."""
    if dry:
        return [Point("jax-train-b2", "jax", batch=2, cap_s=120),
                Point("jax-eval-b2", "jax", what="eval", batch=2, cap_s=120),
                Point("profile-train-b2", "profile", batch=2, cap_s=120),
                Point("jax-train-b2-remat", "jax", batch=2, remat=True, cap_s=120),
                Point("peer-eager-b2", "peer", batch=2, cap_s=120),
                Point("loop-b2", "loop", batch=2, cap_s=120)]
    p = [Point("jax-train-b32", "jax", batch=32),
         Point("peer-eager-b32", "peer", batch=32, cap_s=100),
         Point("jax-eval-b32", "jax", what="eval", batch=32, cap_s=100),
         Point("profile-train-b32", "profile", batch=32, cap_s=100),
         Point("jax-train-b48", "jax", batch=48),
         Point("jax-train-b48-remat", "jax", batch=48, remat=True),
         Point("peer-compile-cl-b32", "peer", batch=32, peer_flags="--compile --channels-last",
               cap_s=200),
         Point("jax-train-b16", "jax", batch=16),
         Point("peer-eager-cl-b32", "peer", batch=32, peer_flags="--channels-last", cap_s=100),
         Point("jax-train-b32-remat", "jax", batch=32, remat=True),
         Point("jax-train-b16-remat", "jax", batch=16, remat=True),
         Point("loop-b32", "loop", batch=32, cap_s=150),
         Point("peer-compile-b32", "peer", batch=32, peer_flags="--compile", cap_s=200),
         Point("jax-eval-b16", "jax", what="eval", batch=16, cap_s=100),
         Point("jax-eval-b48", "jax", what="eval", batch=48, cap_s=100)]
    return p


# Seconds a point of each category is first assumed to take (replaced by what one took).
_ESTIMATE_GPU = {"jax-train": 90.0, "jax-eval": 50.0, "profile-train": 50.0, "peer-eager": 50.0,
                 "peer-compile": 150.0, "loop-train": 100.0}


# --------------------------------------------------------------------------- profile

def _op_kind(name: str) -> str:
    """``loop_multiply_fusion.12`` -> ``loop_multiply_fusion``."""
    return re.sub(r"[.\d]+$", "", name) or name


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


def summarize_trace(trace_dir: Path, steps: int, top: int = 15) -> dict[str, Any]:
    """Top XLA ops (and op kinds, and GPU kernels) by time in the profile under
    ``trace_dir``; errors are recorded, never raised."""
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
                       "top_ops": rank(lambda e: e[0]), "top_kinds": rank(lambda e: _op_kind(e[0]))}
            if source.startswith("device"):
                summary["top_kernels"] = rank(lambda e: e[1])
            return {**summary, "errors": errors}
    return {"status": "error", "errors": errors or [f"no trace files under {trace_dir}"]}


# --------------------------------------------------------------------------- children

def _configure_jax(cache_dir: str | None) -> None:
    """Persistent compilation cache (the profile point reuses the training step's)."""
    import jax
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _memory_stats() -> dict[str, Any] | None:
    import jax
    stats = jax.local_devices()[0].memory_stats()
    return {k: int(v) for k, v in stats.items()} if stats else None


def _run_jax_point(point: Point, args: argparse.Namespace) -> dict[str, Any]:
    from vertex_jax.bench.measure import measure

    config = point_config(args.config, batch=point.batch, remat=point.remat, dtype=args.dtype,
                          depthwise=args.depthwise)
    environment, record = measure(config, point.what, steps=args.steps, repeats=args.repeats)
    return {"environment": environment, "record": record, "memory_stats": _memory_stats()}


def _run_profile_point(point: Point, args: argparse.Namespace) -> dict[str, Any]:
    import jax
    from vertex_jax import mesh as meshlib
    from vertex_jax.bench.measure import (_initial_state, _time, abstract_state, environment,
                                          make_step, random_batch)

    config = point_config(args.config, batch=point.batch, remat=point.remat, dtype=args.dtype,
                          depthwise=args.depthwise)
    mesh = meshlib.make_mesh()
    graphdef, _, _ = abstract_state(config)
    state = _initial_state(config, mesh)
    batch = meshlib.to_global(random_batch(config, point.batch), mesh)
    t0 = time.perf_counter()
    compiled = make_step(config, point.what, graphdef, mesh).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    steps = max(1, args.profile_steps)
    trace_dir = Path(tempfile.mkdtemp(prefix="gpu_check_trace_"))
    with jax.profiler.trace(str(trace_dir)):
        step_s = _time(compiled, state, batch, steps=steps, repeats=1, carries_state=True)[0][0]
    summary = summarize_trace(trace_dir, steps + 2)  # _time's two warm-up steps are traced too
    kept = sorted(trace_dir.rglob("*.xplane.pb"))
    if args.keep_trace and kept:
        shutil.copyfile(kept[-1], args.keep_trace)
        summary["kept_trace"] = str(args.keep_trace)
    summary.update(compile_s=compile_s, step_s=step_s, images_per_s=point.batch / step_s,
                   traced_steps=steps + 2, what=point.what, batch=point.batch, remat=point.remat)
    shutil.rmtree(trace_dir, ignore_errors=True)
    return {"environment": environment(), "profile": summary}


def child_main(args: argparse.Namespace) -> None:
    """Run the points named in ``--child`` (a JSON list) in this process, each result to
    ``<results_dir>/<name>.json`` as soon as it is measured."""
    _configure_jax(args.cache_dir)
    out = Path(args.results_dir)
    for spec in json.loads(args.child):
        point = Point(**spec)
        print(f"[gpu_check] {point.name}: start", flush=True)
        t0 = time.perf_counter()
        try:
            result = (_run_profile_point if point.kind == "profile" else _run_jax_point)(point, args)
            result["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one failed point (OOM, say) must not end the check
            result = {"status": "error", "error": f"{type(e).__name__}: {e}"[:4000]}
        result["wall_s"] = time.perf_counter() - t0
        (out / f"{point.name}.json").write_text(json.dumps(result))
        print(f"[gpu_check] {point.name}: {result['status']} in {result['wall_s']:.1f} s", flush=True)


# --------------------------------------------------------------------------- driver

def _run(cmd: Sequence[str], timeout: float, env: dict[str, str] | None = None
         ) -> tuple[int | None, str]:
    """(return code, output tail) of ``cmd``, its output echoed as it comes; None on
    timeout, when its whole process group (compile workers too) is killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=40)

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc: int | None = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    reader.join(5)
    return rc, "".join(tail)[-2000:]


def _child_cmd(points: Sequence[Point], args: argparse.Namespace, results_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "vertex_jax.bench.gpu_check", "--child",
           json.dumps([dataclasses.asdict(p) for p in points]), "--results-dir", str(results_dir),
           "--config", args.config, "--dtype", args.dtype, "--steps", str(args.steps),
           "--repeats", str(args.repeats), "--profile-steps", str(args.profile_steps),
           "--depthwise", args.depthwise]
    if args.cache_dir:
        cmd += ["--cache-dir", args.cache_dir]
    if args.keep_trace:
        cmd += ["--keep-trace", str(args.keep_trace)]
    return cmd + (["--dry"] if args.dry else [])


def _run_jax_group(points: Sequence[Point], args: argparse.Namespace, timeout: float
                   ) -> dict[str, dict[str, Any]]:
    """Results of JAX/profile points run together in one child process."""
    env = dict(os.environ)
    if args.dry:  # LLVM at -O0: XLA:CPU compiles the step twice as fast; nothing is timed
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    with tempfile.TemporaryDirectory() as tmp:
        rc, tail = _run(_child_cmd(points, args, Path(tmp)), timeout, env)
        results = {}
        for p in points:
            file = Path(tmp) / f"{p.name}.json"
            if file.is_file():
                results[p.name] = json.loads(file.read_text())
            elif rc is None:
                results[p.name] = {"status": "timeout", "error": f"over {timeout:.0f} s"}
            else:
                results[p.name] = {"status": "error", "error": f"child exited {rc}: {tail}"}
    return results


def _run_peer_point(point: Point, args: argparse.Namespace, config: Any, timeout: float
                    ) -> dict[str, Any]:
    """The PyTorch peer at the point's shapes (``peer_command``), time-boxed."""
    from vertex_jax.bench.peer import PEER_SCRIPT, peer_command
    from vertex_jax.models.build import tasks_of

    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("timm") is None:
        return {"status": "unavailable", "reason": "torch or timm not importable"}
    if not PEER_SCRIPT.is_file():
        return {"status": "unavailable", "reason": f"{PEER_SCRIPT} missing (not a source checkout)"}
    shape = {"variant": config.model.variant, "height": config.data.canvas[0],
             "width": config.data.canvas[1], "batch": point.batch, "dtype": args.dtype,
             "remat": point.remat}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        cmd = peer_command(shape, point.peer_flags, tasks=len(tasks_of(config)),
                           augment=config.augment, steps=args.steps, repeats=args.repeats,
                           json_path=out)
        rc, tail = _run(cmd, timeout)
        if rc is None:
            return {"status": "timeout", "error": f"over {timeout:.0f} s", "command": cmd}
        if rc != 0 or not out.is_file():
            return {"status": "error", "error": f"peer exited {rc}: {tail}", "command": cmd}
        result = json.loads(out.read_text())
    return {"status": "ok", "environment": result["environment"], "record": result["records"][0],
            "command": cmd}


def _run_loop_point(point: Point, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """``python -m vertex_jax.bench --what loop`` when this checkout's bench has it."""
    bench_cli = (CHECKOUT / "vertex_jax" / "bench" / "__main__.py")
    if '"loop"' not in bench_cli.read_text():
        return {"status": "unavailable", "reason": "this checkout's bench has no --what=loop"}
    if args.dry:
        return {"status": "unavailable", "reason": "the loop needs grain and ml_collections, "
                                                   "blocked in --dry"}
    missing = [m for m in ("grain", "ml_collections", "array_record")
               if importlib.util.find_spec(m) is None]
    if missing:
        return {"status": "unavailable", "reason": f"not importable: {', '.join(missing)} "
                                                   f"(carry their wheels: benchmarks/gpu_check.sh)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "loop.json"
        cmd = [sys.executable, "-m", "vertex_jax.bench", f"--config={args.config}", "--what=loop",
               f"--batch={point.batch}", f"--dtype={args.dtype}", f"--steps={args.steps}",
               "--repeats=1", f"--json={out}", f"--config.data.data_dir={tmp}/data",
               # a cohort just big enough for the steps (70% train), so that making it fits the cap
               f"--config.data.synthetic.num_patients={max(64, (args.steps + 2) * point.batch * 3 // 2)}"]
        rc, tail = _run(cmd, timeout)
        if rc is None:
            return {"status": "timeout", "error": f"over {timeout:.0f} s", "command": cmd}
        if rc != 0 or not out.is_file():
            return {"status": "error", "error": f"loop bench exited {rc}: {tail}", "command": cmd}
        return {"status": "ok", "result": json.loads(out.read_text()), "command": cmd}


@functools.lru_cache(maxsize=1)
def _nvidia_smi() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                               "clocks.sm,clocks.max.sm,power.limit", "--format=csv"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (subprocess.SubprocessError, OSError) as e:
        return repr(e)


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def _groups(points: Sequence[Point], isolate: bool) -> list[list[Point]]:
    """Consecutive JAX/profile points share a process unless ``isolate``."""
    groups: list[list[Point]] = []
    for p in points:
        jaxlike = p.kind in ("jax", "profile")
        if (not isolate and jaxlike and groups and groups[-1][0].kind in ("jax", "profile")):
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def _document(args: argparse.Namespace, config: Any, loader: str, points: Sequence[Point],
              results: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """The result document of the points measured so far (``complete`` once all ran)."""
    from vertex_jax.bench.record import document, host, versions

    records, jax_env, peer_env, profile, loop = [], None, None, None, None
    for p in points:
        r = results.get(p.name, {"status": "pending"})
        if r["status"] != "ok":
            continue
        if p.kind == "jax":
            jax_env = jax_env or r["environment"]
            records.append({**r["record"], "options": {"point": p.name}})
        elif p.kind == "peer":
            peer_env = peer_env or r["environment"]
            records.append({**r["record"], "options": {**r["record"]["options"], "point": p.name}})
        elif p.kind == "profile":
            jax_env = jax_env or r["environment"]
            profile = r["profile"]
        elif p.kind == "loop":
            loop = r["result"]
    environment = jax_env or {**host(), "versions": versions(["jax", "jaxlib"])}
    environment = {**environment, "nvidia_smi": _nvidia_smi(), "config_loader": loader,
                   "blocked_imports": list(MISSING_ON_DEVICE) if args.dry else []}
    points_out = [{**dataclasses.asdict(p),
                   **{k: v for k, v in results.get(p.name, {"status": "pending"}).items()
                      if k not in ("environment", "record", "profile", "result")}}
                  for p in points]
    skipped = [p["name"] for p in points_out if p["status"] in ("skipped", "timeout", "pending")]
    doc = document(environment, records, mode="dry" if args.dry else "gpu",
                   config={"spec": args.config, "variant": config.model.variant,
                           "depthwise": args.depthwise or config.model.depthwise,
                           "canvas": list(config.data.canvas), "dtype": args.dtype,
                           "tasks": config.tasks, "steps": args.steps, "repeats": args.repeats},
                   complete=len(results) == len(points), budget_s=args.budget_s, wall_s=wall_s,
                   points=points_out, peer_environment=peer_env, profile=profile, loop=loop,
                   rerun=(f"--points={','.join(skipped)}" if skipped else None))
    return doc


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Every planned point within ``args.budget_s``; the result document."""
    from vertex_jax.bench.peer import format_comparison
    from vertex_jax.bench.record import format_table

    start = time.perf_counter()
    config, loader = load_run_config(args.config)
    points = plan(args.dry)
    if args.points:
        wanted = args.points.split(",")
        unknown = sorted(set(wanted) - {p.name for p in points})
        if unknown:
            raise SystemExit(f"--points: unknown {unknown}; known: {[p.name for p in points]}")
        points = [p for p in points if p.name in wanted]
    estimate = {} if args.dry else dict(_ESTIMATE_GPU)
    default = 5.0 if args.dry else 90.0
    results: dict[str, dict[str, Any]] = {}
    for group in _groups(points, isolate=not args.dry):
        left = args.budget_s - (time.perf_counter() - start)
        need = sum(estimate.get(p.category, default) for p in group)
        names = ",".join(p.name for p in group)
        if need > left:
            print(f"[gpu_check] skip {names}: ~{need:.0f} s needed, {left:.0f} s left", flush=True)
            for p in group:
                results[p.name] = {"status": "skipped", "reason": f"budget: ~{need:.0f} s needed, "
                                                                  f"{left:.0f} s left"}
            continue
        timeout = min(sum(p.cap_s for p in group), left)
        print(f"[gpu_check] {names} (time box {timeout:.0f} s, {left:.0f} s left)", flush=True)
        t0 = time.perf_counter()
        if group[0].kind == "peer":
            out = {group[0].name: _run_peer_point(group[0], args, config, timeout)}
        elif group[0].kind == "loop":
            out = {group[0].name: _run_loop_point(group[0], args, timeout)}
        else:
            out = _run_jax_group(group, args, timeout)
        wall = time.perf_counter() - t0
        for p in group:
            out[p.name].setdefault("wall_s", wall / len(group))
            if out[p.name]["status"] == "ok":
                estimate[p.category] = out[p.name]["wall_s"]
            print(f"[gpu_check] {p.name}: {out[p.name]['status']} "
                  f"({out[p.name]['wall_s']:.1f} s)", flush=True)
        results.update(out)
        if args.json:  # a partial result survives a kill from outside
            _write(args.json, _document(args, config, loader, points, results,
                                        time.perf_counter() - start))

    doc = _document(args, config, loader, points, results, time.perf_counter() - start)
    records, profile = doc["records"], doc["profile"]
    if records:
        print("\n" + format_table(records, extra=["point"]))
    pairs = [(j, t) for t in records if t["framework"] == "torch" for j in records
             if j["framework"] == "jax" and j["what"] == "train"
             and (j["batch"], j["remat"]) == (t["batch"], t["remat"])]
    if pairs:
        print("\n" + format_comparison(pairs))
    if profile:
        print("\ntop ops (profile, ms/step):")
        for op in profile.get("top_ops", [])[:10]:
            print(f"  {op['ms_per_step']:9.3f}  {op['share']:6.1%}  {op['name']}")
    if doc["rerun"]:
        print(f"\nnot measured; rerun: python -m vertex_jax.bench.gpu_check {doc['rerun']}")
    return doc


# --------------------------------------------------------------------------- memory plan

def fit_memory(batches: Sequence[int], totals: Sequence[int]) -> dict[str, float]:
    """Least-squares ``total = fixed + per_image × batch``."""
    n = len(batches)
    mean_b, mean_t = sum(batches) / n, sum(totals) / n
    var = sum((b - mean_b) ** 2 for b in batches)
    per_image = sum((b - mean_b) * (t - mean_t) for b, t in zip(batches, totals)) / var
    fixed = mean_t - per_image * mean_b
    worst = max(abs(fixed + per_image * b - t) / t for b, t in zip(batches, totals))
    return {"per_image_bytes": per_image, "fixed_bytes": fixed, "max_relative_residual": worst}


def _largest_batch(fit: dict[str, float], capacity: float) -> int:
    return max(0, math.floor((capacity - fit["fixed_bytes"]) / fit["per_image_bytes"]))


# LLVM's optimisation level does not change XLA's buffer assignment (checked on the first
# point of every plan) and halves XLA:CPU's compile time.
_PLAN_OPTIONS = {"xla_backend_optimization_level": 0}
_BUFFERS = ("argument", "output", "alias", "temp")


def _analysis(compiled: Any) -> dict[str, int]:
    """Sizes of ``compiled.memory_analysis()`` in bytes."""
    m = compiled.memory_analysis()
    return {k: int(getattr(m, f"{k}_size_in_bytes")) for k in (*_BUFFERS, "generated_code")}


def saved_activation_bytes(config: Any, batch: int) -> int:
    """Bytes of the residuals the model's forward pass keeps for its backward pass (JAX's
    ``saved_residuals`` of the loss w.r.t. the parameters; parameters themselves left out):
    the activation memory of a training step before any backend's scheduling, so
    ``model.remat``'s saving shows here whatever a backend does with it."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax._src.ad_checkpoint import saved_residuals  # no public equivalent that returns
    from vertex_jax.models.build import build_model

    model = nnx.eval_shape(lambda: build_model(config, seed=0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    h, w = config.data.canvas

    def loss(params: Any, rest: Any, images: jax.Array, clinical: jax.Array, mask: jax.Array
             ) -> jax.Array:
        net = nnx.merge(graphdef, params, rest)
        net.train()
        return net(images, clinical * mask, mask).astype(jnp.float32).sum()
    args = (params, rest, jax.ShapeDtypeStruct((batch, h, w, 1), jnp.float32),
            jax.ShapeDtypeStruct((batch, 3), jnp.float32), jax.ShapeDtypeStruct((batch, 3), jnp.float32))
    return sum(aval.size * aval.dtype.itemsize for aval, source in saved_residuals(loss, *args)
               if not source.startswith("from the argument"))


def memory_plan(spec: str, batches: Sequence[int], dtype: str) -> dict[str, Any]:
    """XLA's compiled memory analysis of the training step at ``batches``, remat off and
    on, with grouped-convolution depthwise layers (GPU's "auto"); nothing is executed."""
    import jax
    from vertex_jax import mesh as meshlib
    from vertex_jax.bench.measure import abstract_state, environment, make_step, random_batch

    if len(set(batches)) < 2:
        raise ValueError(f"--batches: at least two sizes to fit, got {list(batches)}")
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
        fit["largest_batch"] = {name: _largest_batch(fit, cap) for name, cap in DEVICE_MEMORY.items()}
        fit["largest_batch_at_jax_default_fraction"] = {
            name: _largest_batch(fit, cap * JAX_DEFAULT_FRACTION) for name, cap in DEVICE_MEMORY.items()}
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


def _print_plan(plan_doc: dict[str, Any]) -> None:
    for remat, part in plan_doc["remat"].items():
        fit = part["fit"]
        sizes = ", ".join(f"{k}: {v}" for k, v in fit["largest_batch"].items())
        print(f"remat={remat}: {fit['per_image_bytes'] / 2**30:.3f} GiB per image + "
              f"{fit['fixed_bytes'] / 2**30:.3f} GiB fixed (fit residual "
              f"{fit['max_relative_residual']:.1%}); largest batch {sizes}; saved activations "
              f"{fit['saved_activation_bytes_per_image'] / 2**30:.3f} GiB per image")


# --------------------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vertex_jax.bench.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU smoke run: tiny config, batch 2, "
                        "one step, the lent machine's missing packages blocked")
    parser.add_argument("--memory-plan", action="store_true", help="compiled memory analysis "
                        "of the training step at --batches, remat off and on")
    parser.add_argument("--batches", default="2,4", help="--memory-plan batch sizes")
    parser.add_argument("--config", default=None, help="run config (default configs/xray.py; "
                        "--dry: configs/xray.py:tiny)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--depthwise", default=None, help="model.depthwise (default: the "
                        "config's, auto = grouped convolutions on GPUs; --dry: conv, as on GPUs)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run "
                        "(default 10; --dry 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; --dry 1)")
    parser.add_argument("--profile-steps", type=int, default=None, help="traced steps after the "
                        "two warm-up steps (default 3; --dry 1)")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of "
                        "all points (default 420; --dry 240)")
    parser.add_argument("--points", default="", help="only these points (comma-separated names)")
    parser.add_argument("--cache-dir", default=None, help="JAX persistent compilation cache "
                        "(default: a temporary folder)")
    parser.add_argument("--keep-trace", type=Path, default=None, help="copy the profile's "
                        ".xplane.pb here")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results-dir", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.dry:
        block_imports()
    defaults = dict(config="configs/xray.py:tiny" if args.dry else "configs/xray.py",
                    depthwise="conv" if args.dry else "",
                    steps=1 if args.dry else 10, repeats=1 if args.dry else 3,
                    profile_steps=1 if args.dry else 3, budget_s=240.0 if args.dry else 420.0)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.child is not None:
        child_main(args)
        return
    if args.memory_plan:
        doc = memory_plan(args.config, [int(b) for b in args.batches.split(",")], args.dtype)
        from vertex_jax.bench.record import document
        doc = document(doc.pop("environment"), [], memory_plan=doc)
        _print_plan(doc["memory_plan"])
    else:
        own_cache = args.cache_dir is None
        if own_cache:
            args.cache_dir = tempfile.mkdtemp(prefix="gpu_check_cache_")
        try:
            doc = run_check(args)
        finally:
            if own_cache:
                shutil.rmtree(args.cache_dir, ignore_errors=True)
    if args.json:
        _write(args.json, doc)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

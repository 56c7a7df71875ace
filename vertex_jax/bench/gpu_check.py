"""One-shot GPU check: every throughput figure of one lent GPU in one run, into one JSON.

    python -m vertex_jax.bench.gpu_check [--json out.json] [--budget-s 500] [--points a,b]
    python -m vertex_jax.bench.gpu_check --dry [--json out.json]     # CPU, tiny, seconds
    python -m vertex_jax.bench.gpu_check --memory-plan [--batches 2,4] [--json out.json]

``benchmarks/gpu_check.sh`` runs it on a lent GPU. It measures EfficientNet-B4 +
clinical fusion at 1024×512 in bfloat16 (``configs/xray.py``): the training step's cold
compile in a fresh compilation cache, again in a fresh cache given only that compile's
autotuning results, and its warm compile in a second process, the
PyTorch peer (``torch.compile`` + channels-last, compiled in the background once the
isolated compile points are done, timed alone), evaluation, the training loop (and
again with the step dispatched from its own thread; the JSON's ``loops``),
each lever against the baseline (recomputed activations, symmetric padding, depthwise as
shifts, BatchNorm backward, a packed state), the combination of the levers that won
(decided during the run), larger batches, a profile of the combination, and XLA's default
flags from cold (:func:`vertex_jax.bench.gpu_points.plan`).
Every point runs in a time-boxed child process, in priority order, while the budget
lasts; a point killed while timing still reports its compile time; points that do not
fit are recorded as skipped (rerun them with ``--points``). The JSON holds the device,
versions, command, every record (each timed step's wall time and dispatch time among
them), every point's status, the levers' verdicts and the targets' (met, missed or not
measured: :mod:`vertex_jax.bench.gpu_verdicts`). ``--keep-autotune`` archives the
run's autotuning results, which ship once unpacked into ``vertex_jax/autotune_results``.

The lent machine lacks ml-collections, grain and pydicom; nothing here needs them
(:mod:`vertex_jax.bench.plain_config`). ``--dry`` blocks those packages and uses the
``tiny`` config at batch 2 and one step, so CPU tests keep this path working.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from vertex_jax.bench.gpu_points import BASELINE, Point, check_batch, child_main, plan
from vertex_jax.bench.gpu_peer import PeerRun
from vertex_jax.bench.gpu_verdicts import combine_levers, format_verdicts, lever_verdicts, verdicts
from vertex_jax.bench.plain_config import MISSING_ON_DEVICE, block_imports, load_run_config
from vertex_jax.compile_cache import AUTOTUNE_DIR, archive_autotune_results, seed_autotune_results
from vertex_jax.xla_flags import PRESETS, apply_preset, preset_flags

__all__ = ["run_check", "main"]


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


def _env(args: argparse.Namespace, preset: str) -> dict[str, str]:
    """A child's environment: the XLA preset's flags (LLVM at -O0 in --dry: XLA:CPU then
    compiles twice as fast, and nothing is timed there)."""
    env = dict(os.environ)
    apply_preset(preset, env)
    if args.dry:
        env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} --xla_backend_optimization_level=0".strip()
    return env


def _run_jax_group(points: Sequence[Point], args: argparse.Namespace, timeout: float
                   ) -> dict[str, dict[str, Any]]:
    """Results of JAX/profile points run together in one child process."""
    cache = Path(args.cache_root) / points[0].cache
    seeded = _seed(points[0], Path(args.cache_root))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "vertex_jax.bench.gpu_check", "--child",
               json.dumps([dataclasses.asdict(p) for p in points]), "--results-dir", tmp,
               "--config", args.config, "--dtype", args.dtype, "--steps", str(args.steps),
               "--repeats", str(args.repeats), "--profile-steps", str(args.profile_steps),
               "--depthwise", args.depthwise, "--cache-dir", str(cache)]
        if args.keep_trace:
            cmd += ["--keep-trace", str(args.keep_trace)]
        rc, tail = _run(cmd + (["--dry"] if args.dry else []), timeout, _env(args, points[0].xla))
        results = {}
        for p in points:
            file, compiled = Path(tmp) / f"{p.name}.json", Path(tmp) / f"{p.name}.compiled.json"
            if file.is_file():
                results[p.name] = json.loads(file.read_text())
            elif rc is None:
                results[p.name] = {"status": "timeout", "error": f"over {timeout:.0f} s"}
            else:
                results[p.name] = {"status": "error", "error": f"child exited {rc}: {tail}"}
            if results[p.name]["status"] != "ok" and compiled.is_file():
                results[p.name]["compile_s"] = json.loads(compiled.read_text())["compile_s"]
            if seeded is not None:
                results[p.name]["seeded_autotune_results"] = seeded
    return results


def _seed(point: Point, cache_root: Path) -> int | None:
    """Copy the autotuning results of the cache ``point.seed_from`` into the point's own
    cache; how many (None for a point that names no seed)."""
    if not point.seed_from:
        return None
    return seed_autotune_results(cache_root / point.seed_from / AUTOTUNE_DIR, cache_root / point.cache)


def _config_flags(overrides: dict[str, Any]) -> list[str]:
    return [f"--config.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items()]


# The loop points' steps at least: 30 timed (the clock leaves the first out), three per
# position of the logging period (10), so each run's ``stall`` is measured
# (bench.loop.periodic_stall); and under STEPS_PER_EPOCH, so the loop's step is the
# isolated step's program.
LOOP_STEPS = 31


def _run_loop_point(point: Point, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """``python -m vertex_jax.bench --what loop`` (random canvases, no cohort to generate)
    with the levers that won before it in the plan (none: it runs before them, against the
    baseline step), sharing the check's compilation cache. Its validation runs at the
    evaluation point's batch (``jax-eval-b{4 * batch}``, before it in the plan), so the loop
    loads both of its programs from the cache instead of compiling its evaluation step cold
    (validation is off the loop's clock; its batch changes no figure)."""
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
               f"--batch={point.batch}", f"--dtype={args.dtype}", f"--steps={max(args.steps, LOOP_STEPS)}",
               "--repeats=1", f"--json={out}", f"--config.eval_batch_size={4 * point.batch}",
               *([f"--config.model.depthwise={args.depthwise}"] if args.depthwise else []),
               *_config_flags(point.overrides)]
        env = _env(args, point.xla)
        env["VERTEX_COMPILE_CACHE"] = str(Path(args.cache_root) / point.cache)
        rc, tail = _run(cmd, timeout, env)
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


def _groups(points: Sequence[Point]) -> list[list[Point]]:
    """Consecutive JAX points of one XLA preset and cache share a process, unless a point
    is ``isolate``d."""
    groups: list[list[Point]] = []
    for p in points:
        last = groups[-1][-1] if groups else None
        if (p.kind == "jax" and last is not None and last.kind == "jax"
                and not p.isolate and not last.isolate and (p.xla, p.cache) == (last.xla, last.cache)):
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def _document(args: argparse.Namespace, config: Any, loader: str, points: Sequence[Point],
              results: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """The result document of the points measured so far (``complete`` once all ran)."""
    from vertex_jax.bench.record import document, host, versions

    records, jax_env, peer_env, profile, loops = [], None, None, None, {}
    for p in points:
        r = results.get(p.name, {"status": "pending"})
        if r["status"] != "ok":
            continue
        if "record" in r:
            if p.kind == "peer":
                peer_env = peer_env or r["environment"]
            else:
                jax_env = jax_env or r["environment"]
            records.append({**r["record"], "options": {**r["record"]["options"], "point": p.name,
                                                       "xla": p.xla, **p.overrides}})
        elif p.kind == "profile":
            jax_env = jax_env or r["environment"]
            profile = r["profile"]
        elif p.kind == "loop":
            loops[p.name] = r["result"]
    environment = jax_env or {**host(), "versions": versions(["jax", "jaxlib"])}
    environment = {**environment, "nvidia_smi": _nvidia_smi(), "config_loader": loader,
                   "blocked_imports": list(MISSING_ON_DEVICE) if args.dry else []}
    points_out = [{**dataclasses.asdict(p),
                   **{k: v for k, v in results.get(p.name, {"status": "pending"}).items()
                      if k not in ("environment", "record", "profile", "result")}}
                  for p in points]
    skipped = [p["name"] for p in points_out if p["status"] in ("skipped", "timeout", "pending")]
    batch = check_batch(args.dry)
    baseline = BASELINE.format(batch=batch)
    doc = document(environment, records, mode="dry" if args.dry else "gpu",
                   config={"spec": args.config, "variant": config.model.variant, "batch": batch,
                           "depthwise": args.depthwise or config.model.depthwise,
                           "canvas": list(config.data.canvas), "dtype": args.dtype,
                           "tasks": config.tasks, "steps": args.steps, "repeats": args.repeats},
                   complete=len(results) == len(points), budget_s=args.budget_s, wall_s=wall_s,
                   points=points_out, levers=lever_verdicts(points, results, baseline),
                   peer_environment=peer_env, profile=profile,
                   loops=loops,
                   rerun=(f"--points={','.join(skipped)}" if skipped else None))
    try:
        doc["targets"] = verdicts(doc)
    except Exception as e:  # noqa: BLE001 - reading the targets must never cost the run its JSON
        doc["targets"], doc["targets_error"] = [], f"{type(e).__name__}: {e}"
    return doc


def _select(points: list[Point], wanted: str) -> list[Point]:
    if not wanted:
        return points
    names = wanted.split(",")
    unknown = sorted(set(names) - {p.name for p in points})
    if unknown:
        raise SystemExit(f"--points: unknown {unknown}; known: {[p.name for p in points]}")
    return [p for p in points if p.name in names]


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Every planned point within ``args.budget_s``; the result document."""
    from vertex_jax.bench.peer import format_comparison
    from vertex_jax.bench.record import format_table

    start = time.perf_counter()
    config, loader = load_run_config(args.config)
    points = _select(plan(args.dry, args.xla), args.points)
    baseline = BASELINE.format(batch=check_batch(args.dry))
    estimate: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    peers: dict[str, PeerRun] = {}

    def start_peers() -> None:
        for p in points:
            if p.kind == "peer" and p.name not in peers and p.name not in results:
                peers[p.name] = PeerRun(p, args, config)
    try:
        for group in _groups(points):
            if group[0].kind == "peer" or not all(p.isolate for p in group):
                start_peers()  # after the isolated points (the cold and warm compiles)
            left = args.budget_s - (time.perf_counter() - start)
            need = sum(estimate.get(p.category, p.estimate_s) for p in group)
            names = ",".join(p.name for p in group)
            if need > left:
                print(f"[gpu_check] skip {names}: ~{need:.0f} s needed, {left:.0f} s left", flush=True)
                for p in group:
                    results[p.name] = {"status": "skipped", "reason": f"budget: ~{need:.0f} s needed, "
                                                                      f"{left:.0f} s left"}
                    if p.name in peers:
                        peers[p.name].close()
                continue
            # with every lever that won so far (a loop point with a setting of its own: the
            # baseline's step, so its loop is read against the first loop's)
            if group[0].kind in ("combo", "profile") or (group[0].kind == "loop" and not group[0].overrides):
                group = [combine_levers(group[0], lever_verdicts(points, results, baseline))]
                points[[q.name for q in points].index(group[0].name)] = group[0]
            timeout = min(sum(p.cap_s for p in group), left)
            print(f"[gpu_check] {names} (time box {timeout:.0f} s, {left:.0f} s left)", flush=True)
            t0 = time.perf_counter()
            if group[0].kind == "peer":
                out = {group[0].name: peers[group[0].name].finish(timeout)}
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
    finally:
        for peer in peers.values():
            peer.close()

    doc = _document(args, config, loader, points, results, time.perf_counter() - start)
    records, profile = doc["records"], doc["profile"]
    if records:
        print("\n" + format_table(records, extra=["point"]))
    pairs = [(j, t) for t in records if t["framework"] == "torch" for j in records
             if j["framework"] == "jax" and j["what"] == "train"
             and (j["batch"], j["remat"]) == (t["batch"], t["remat"])]
    if pairs:
        print("\n" + format_comparison(pairs))
    for name, v in doc["levers"].items():
        print(f"lever {name}: {v['ratio']:.3f}x the baseline (margin {v['margin']:.1%}): "
              f"{'wins' if v['wins'] else 'no'}")
    if profile:
        print("\ntop op kinds (profile, ms/step):")
        for op in profile.get("top_kinds", [])[:10]:
            print(f"  {op['ms_per_step']:9.3f}  {op['share']:6.1%}  {op['name']}")
        bt = profile.get("bytes_and_time")
        if bt:
            print(f"\nkernels' estimated bytes against their time ({bt['est_gb_per_step']:.1f} GB/step, "
                  f"{bt['matched_share']:.0%} of the traced time matched; ms/step, GB/step, GB/s):")
            for row in bt["by_kind"][:10]:
                rate = "-" if row["est_gb_per_s"] is None else f"{row['est_gb_per_s']:.1f}"
                print(f"  {row['ms_per_step']:9.3f}  {row['est_gb_per_step']:7.2f}  {rate:>9}  {row['kind']}")
    print("\n" + format_verdicts(doc["targets"]))
    if "targets_error" in doc:
        print(f"the targets could not be read: {doc['targets_error']}")
    if doc["rerun"]:
        print(f"\nnot measured; rerun: python -m vertex_jax.bench.gpu_check {doc['rerun']}")
    return doc


def _preset(name: str) -> str:
    try:
        preset_flags(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vertex_jax.bench.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU smoke run: tiny config, batch 2, "
                        "one step, the lent machine's missing packages blocked")
    parser.add_argument("--memory-plan", action="store_true", help="compiled memory analysis "
                        "of the training step at --batches, remat off and on "
                        "(vertex_jax.bench.memory_plan)")
    parser.add_argument("--batches", default="2,4", help="--memory-plan batch sizes")
    parser.add_argument("--config", default=None, help="run config (default configs/xray.py; "
                        "--dry: configs/xray.py:tiny)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--depthwise", default=None, help="model.depthwise (default: the "
                        "config's, auto = grouped convolutions on GPUs; --dry: conv, as on GPUs)")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed run "
                        "(default 20; --dry 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 3; --dry 1)")
    parser.add_argument("--profile-steps", type=int, default=None, help="traced steps after the "
                        "two warm-up steps (default 3; --dry 1)")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of "
                        "all points (default 500; --dry 300)")
    parser.add_argument("--points", default="", help="only these points (comma-separated names)")
    parser.add_argument("--xla", default="fast-compile", type=_preset,
                        help="XLA flag preset of the points that name none (vertex_jax.xla_flags: "
                        f"{', '.join(sorted(PRESETS))}, or several joined with '+')")
    parser.add_argument("--cache-root", default=None, help="the points' compilation caches "
                        "(default: a fresh temporary folder, so the first compile is cold)")
    parser.add_argument("--keep-trace", type=Path, default=None, help="copy the profile's "
                        ".xplane.pb here (and its program's text beside it, NAME.hlo.txt.gz)")
    parser.add_argument("--keep-autotune", type=Path, default=None, help="archive XLA's autotuning "
                        "results of the main cache here (.tar.gz; unpacked into "
                        "vertex_jax/autotune_results, they ship)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--results-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.dry:
        block_imports()
    defaults = dict(config="configs/xray.py:tiny" if args.dry else "configs/xray.py",
                    depthwise="conv" if args.dry else "",
                    steps=1 if args.dry else 20, repeats=1 if args.dry else 3,
                    profile_steps=1 if args.dry else 3, budget_s=300.0 if args.dry else 500.0)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.child is not None:
        child_main(args)
        return
    if args.memory_plan:
        from vertex_jax.bench.memory_plan import memory_plan, print_plan
        from vertex_jax.bench.record import document
        doc = memory_plan(args.config, [int(b) for b in args.batches.split(",")], args.dtype)
        doc = document(doc.pop("environment"), [], memory_plan=doc)
        print_plan(doc["memory_plan"])
    else:
        own_cache = args.cache_root is None
        if own_cache:
            args.cache_root = tempfile.mkdtemp(prefix="gpu_check_cache_")
        try:
            doc = run_check(args)
            if args.keep_autotune:
                kept = archive_autotune_results(Path(args.cache_root) / "main", args.keep_autotune)
                doc["autotune_results"] = {"files": kept, "archive": str(args.keep_autotune) if kept else None}
                print(f"autotuning results kept: {kept} -> {args.keep_autotune if kept else '(none)'}")
        finally:
            if own_cache:
                shutil.rmtree(args.cache_root, ignore_errors=True)
    if args.json:
        _write(args.json, doc)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

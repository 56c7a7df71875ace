"""The GPU check's points: what each measures, their order, and how a child process runs them.

A point is one measurement: kind ``jax`` (the training or evaluation step,
:func:`vertex_jax.bench.measure.measure`), ``profile`` (a traced training step),
``peer`` (the PyTorch peer), ``loop`` (``python -m vertex_jax.bench --what loop``) or
``combo`` (the training step with every lever that won, decided while the check runs).
A point names the XLA flag preset it runs under (:mod:`vertex_jax.xla_flags`), the
compilation cache it shares (points of one cache reuse each other's executables and
autotuning; a new cache name is a cold start) and, for a lever, the config fields it
changes against the baseline.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vertex_jax.bench.hlo_kernels import entry_kernels
from vertex_jax.bench.plain_config import point_config
from vertex_jax.bench.trace import summarize_trace

__all__ = ["Point", "plan", "check_batch", "BASELINE", "LOOP", "child_main"]

BASELINE = "jax-train-b{batch}"  # the training step at the check's batch, new defaults
LOOP = "loop-b{batch}"  # the training loop at the check's batch, as configured
# Seconds of timed steps per point at most: a pathologically slow point (no autotuning: a
# step over 2 s) is measured with fewer steps instead of running out its time box.
TIMING_BUDGET_S = 20.0


@dataclasses.dataclass
class Point:
    """One measurement, run in a child process (see the module docstring)."""

    name: str
    kind: str
    what: str = "train"
    batch: int = 32
    remat: bool = False
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    xla: str = "fast-compile"
    cache: str = "main"
    seed_from: str = ""      # a cache whose autotuning results are copied into this one first
    lever: bool = False      # compared with the baseline; a winner joins the combination
    isolate: bool = False    # a process of its own (cold or warm compile is the figure)
    peer_flags: str = ""
    cap_s: float = 150.0
    estimate_s: float = 60.0

    @property
    def category(self) -> str:
        """Points of one category take about as long (the budget's running estimates)."""
        return "peer" if self.kind == "peer" else f"{self.kind}-{self.what}-{self.cache}"


def check_batch(dry: bool) -> int:
    """The check's training batch (the targets' batch; evaluation runs at 4x): the peer's
    32 on a GPU, 2 in a dry run."""
    return 2 if dry else 32


def plan(dry: bool, xla: str = "fast-compile") -> list[Point]:
    """Every point, most valuable first: what runs first survives a short budget. ``xla``
    is the XLA preset of every point that does not name its own."""
    b = check_batch(dry)
    cap = 120.0 if dry else 150.0
    first = BASELINE.format(batch=b)
    lever = dict(lever=True, batch=b, cap_s=cap, estimate_s=10.0 if dry else 45.0)
    points = [
        # The isolated points come first and alone: the peer starts compiling only after them
        # (gpu_check.run_check), so the cold compiles are JAX's alone. Cold compile at the
        # chosen flags (fresh cache), the same given its autotuning results, the same with
        # every autotuning lever, then the first in a second process (warm).
        Point(first, "jax", batch=b, isolate=True, cap_s=cap + 150, estimate_s=10 if dry else 120),
        # A fresh machine given the autotuning results of the first point (what ships in
        # vertex_jax/autotune_results): a cold cache holding nothing else, so its compile is
        # the cold one without autotuning (§7: about half of the 113 s).
        Point(f"{first}-autotune-seeded-cold", "jax", batch=b, cache="autotune-seeded", seed_from="main",
              isolate=True, cap_s=cap + 150, estimate_s=10 if dry else 70),
        # The first compile with every autotuning lever (§16, §19): level 1, no fusion
        # autotuning, LLVM's module compiled in parallel, cuBLAS timed over 4 candidates.
        Point(f"{first}-quick-compile-cold", "jax", batch=b, xla="quick-compile",
              cache="quick-compile", isolate=True, cap_s=cap + 150, estimate_s=10 if dry else 90),
        Point(f"{first}-warm", "jax", batch=b, isolate=True, cap_s=cap, estimate_s=10 if dry else 25),
        # Targets not yet measured on a GPU: evaluation (while the peer compiles), the peer,
        # the loop; then the levers, the defaults' own first (§15), memory (§13), bytes (§12).
        Point(f"jax-eval-b{4 * b}", "jax", what="eval", batch=4 * b, cap_s=cap, estimate_s=10 if dry else 30),
        # Evaluation's pool recomputed (model.se_pool=auto on GPUs, §14) against the shared
        # form it replaced: a fifth fewer bytes by the described H200's program.
        Point(f"jax-eval-b{4 * b}-se-pool-shared", "jax", what="eval", batch=4 * b,
              overrides={"model.se_pool": "shared"}, cap_s=cap, estimate_s=10 if dry else 25),
        Point(f"peer-compile-cl-b{b}", "peer", batch=b, cap_s=cap + 60, estimate_s=10 if dry else 50,
              peer_flags="" if dry else "--compile --channels-last"),
        Point(LOOP.format(batch=b), "loop", batch=b, cap_s=cap + 50, estimate_s=10 if dry else 70),
        # Evaluation's BatchNorms applied apart (model.fold_bn=auto folds them on GPUs, §21):
        # 32 fewer kernels and 4% fewer bytes by the described H200's program. After the
        # targets: it measures the form before, against jax-eval-b128.
        Point(f"jax-eval-b{4 * b}-bn-separate", "jax", what="eval", batch=4 * b,
              overrides={"model.fold_bn": "separate"}, cap_s=cap, estimate_s=10 if dry else 25),
        # The fused BatchNorm's dz written out and read back, the default before §15 (now
        # computed again in the dx pass: ~13% fewer bytes by the described H200's program).
        Point(f"{first}-bn-grad-float32", "jax", overrides={"model.batchnorm_grad": "float32"}, **lever),
        # The memory target (the peer's 21.9 GiB at batch 32): the first two stages recompute,
        # planned at 21.7 GiB for 140 more kernels and ~3% more bytes (§13). A process of its
        # own: the peak memory it reports is then its own.
        Point(f"{first}-recompute-early", "jax", isolate=True,
              overrides={"model.recompute": "elementwise", "model.recompute_stages": 2}, **lever),
        # Memory and bytes (§12): no float32 copies where the program rounds to bfloat16.
        Point(f"{first}-no-excess-precision", "jax", xla="fast-compile-no-excess-precision", **lever),
        # The loop with the step called from a thread of its own (§20): the host's work per
        # step beside the launches. The baseline's step, as the first loop's (no levers).
        Point(f"{LOOP.format(batch=b)}-dispatch-thread", "loop", batch=b, overrides={"dispatch_thread": True},
              cap_s=cap + 50, estimate_s=10 if dry else 70),
        # Launch overhead (§7; at most ~5 µs a kernel by §12): CUDA graphs over shorter runs.
        Point(f"{first}-graphs", "jax", xla="fast-compile-graphs", **lever),
        # The first compile with 54 fewer autotuning problems (§12): squeeze-excite as
        # XLA's reductions; a cold cache of its own, so its compile seconds are the figure.
        Point(f"{first}-se-reduce-cold", "jax", batch=b, overrides={"model.se_dense": "reduce"},
              cache="se-reduce", isolate=True, lever=True, cap_s=cap + 150, estimate_s=10 if dry else 110),
        # The first compile's levers one by one: autotuning at level 1, and without fusion
        # autotuning (599 of B4's 757 autotuned instructions, §19).
        Point(f"{first}-autotune1-cold", "jax", batch=b, xla="fast-compile-autotune1",
              cache="autotune1", isolate=True, cap_s=cap + 150, estimate_s=10 if dry else 100),
        Point(f"{first}-no-fusion-autotune-cold", "jax", batch=b, xla="fast-compile-no-fusion-autotune",
              cache="no-fusion-autotune", isolate=True, cap_s=cap + 150, estimate_s=10 if dry else 90),
        # The same with the 1x1 convolutions as cuBLAS products (§16): 59 of the 93 cuDNN
        # problems become products, whose autotuning the preset bounds; 77 fewer kernels.
        Point(f"{first}-pointwise-dot-quick-compile-cold", "jax", batch=b, xla="quick-compile",
              overrides={"model.pointwise": "dot"}, cache="pointwise-dot", isolate=True,
              cap_s=cap + 150, estimate_s=10 if dry else 90),
        # Every stage recomputed (12.6 GiB planned, +893 kernels before §15), evaluation at batch 32 (§7's
        # point), and levers that §14-15 left with little to gain: the preset in evaluation,
        # the swish cotangent written in bfloat16 (192 GB recomputed against 202 GB, §15).
        Point(f"{first}-recompute", "jax", overrides={"model.recompute": "elementwise"}, **lever),
        Point(f"jax-eval-b{b}", "jax", what="eval", batch=b, cap_s=cap, estimate_s=10 if dry else 30),
        Point(f"jax-eval-b{4 * b}-no-excess-precision", "jax", what="eval", batch=4 * b,
              xla="fast-compile-no-excess-precision", cap_s=cap, estimate_s=10 if dry else 20),
        Point(f"{first}-no-excess-precision-bn-grad-compute", "jax", xla="fast-compile-no-excess-precision",
              overrides={"model.batchnorm_grad": "compute"}, **lever),
        # Levers not yet measured, then the combination of every lever that won.
        Point(f"{first}-symmetric", "jax", overrides={"model.padding": "symmetric"}, **lever),
        Point(f"{first}-shifts", "jax", overrides={"model.depthwise": "shifts"}, **lever),
        Point(f"combo-b{b}", "combo", batch=b, cap_s=cap, estimate_s=10 if dry else 45),
        Point(f"jax-train-b{2 * b}", "jax", batch=2 * b, cap_s=cap, estimate_s=10 if dry else 60),
        Point(f"jax-train-b{2 * b}-recompute", "jax", batch=2 * b,
              overrides={"model.recompute": "elementwise"}, cap_s=cap, estimate_s=10 if dry else 60),
        Point(f"jax-train-b{3 * b // 2}", "jax", batch=3 * b // 2, cap_s=cap, estimate_s=10 if dry else 60),
        Point(f"profile-combo-b{b}", "profile", batch=b, cap_s=cap, estimate_s=10 if dry else 40),
        # Levers measured on the H200 before (2026-12-04), measured again when time is left:
        # bn-autodiff, unpacked and per-parameter moments are the previous defaults.
        Point(f"{first}-unflattened", "jax", overrides={"optim.flatten": "false"}, **lever),
        Point(f"{first}-bn-autodiff", "jax", overrides={"model.batchnorm": "autodiff"}, **lever),
        Point(f"{first}-unpacked", "jax", overrides={"pack_state": "false"}, **lever),
        Point(f"jax-train-b{2 * b}-remat", "jax", batch=2 * b, remat=True, cap_s=cap,
              estimate_s=10 if dry else 60),
        # XLA's default flags, and no autotuning (57.7 s cold, a 30x slower step), from cold.
        Point(f"{first}-xla-default-cold", "jax", batch=b, xla="default", cache="xla-default",
              isolate=True, cap_s=cap + 150, estimate_s=10 if dry else 200),
        Point(f"{first}-autotune0-cold", "jax", batch=b, xla="no-autotune", cache="no-autotune",
              isolate=True, cap_s=cap + 60, estimate_s=10 if dry else 90),
    ]
    return [dataclasses.replace(p, xla=xla) if p.xla == "fast-compile" and "main" in (p.cache, p.seed_from)
            else p for p in points]


# --------------------------------------------------------------------------- child side

def _memory_stats() -> dict[str, Any] | None:
    import jax
    stats = jax.local_devices()[0].memory_stats()
    return {k: int(v) for k, v in stats.items()} if stats else None


def _config(point: Point, args: argparse.Namespace) -> Any:
    return point_config(args.config, batch=point.batch, remat=point.remat, dtype=args.dtype,
                        depthwise=args.depthwise, overrides=point.overrides)


def _forms(config: Any) -> dict[str, bool]:
    """What this process made of the ``auto`` settings: their accelerator forms or not,
    and the packed state and flat moments of the training step."""
    from vertex_jax.auto_setting import on_accelerator
    from vertex_jax.train.packing import pack_state_enabled
    from vertex_jax.train.state import flatten_enabled
    return {"accelerator_forms": on_accelerator(), "pack_state": pack_state_enabled(config),
            "optim.flatten": flatten_enabled(config)}


def _run_jax_point(point: Point, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from vertex_jax.bench.measure import measure

    def compiled(seconds: float) -> None:  # survives a kill while the step is timed
        (out / f"{point.name}.compiled.json").write_text(json.dumps({"compile_s": seconds}))
    config = _config(point, args)
    environment, record = measure(config, point.what, steps=args.steps,
                                  repeats=args.repeats, options={"point": point.name},
                                  on_compiled=compiled, budget_s=TIMING_BUDGET_S)
    return {"environment": environment, "record": record, "memory_stats": _memory_stats(),
            "forms": _forms(config)}


def _run_profile_point(point: Point, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import jax
    from vertex_jax import mesh as meshlib
    from vertex_jax.bench.measure import _time, abstract_state, environment, make_step, random_batch, stepped_state

    config = _config(point, args)
    mesh = meshlib.make_mesh()
    graphdef, _, _ = abstract_state(config)
    state, packing = stepped_state(config, point.what, mesh)
    batch = meshlib.to_global(random_batch(config, point.batch), mesh)
    t0 = time.perf_counter()
    compiled = make_step(config, point.what, graphdef, mesh, packing).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    steps = max(1, args.profile_steps)
    trace_dir = Path(tempfile.mkdtemp(prefix="gpu_check_trace_"))
    with jax.profiler.trace(str(trace_dir)):
        step_s = _time(compiled, state, batch, steps=steps, repeats=1, carries_state=True).runs[0]
    program = compiled.as_text()
    # _time's two warm-up steps are traced too
    summary = summarize_trace(trace_dir, steps + 2, kernels=entry_kernels(program))
    kept = sorted(trace_dir.rglob("*.xplane.pb"))
    if args.keep_trace and kept:
        shutil.copyfile(kept[-1], args.keep_trace)
        summary["kept_trace"] = str(args.keep_trace)
        program_copy = args.keep_trace.with_suffix("").with_suffix(".hlo.txt.gz")  # profile.xplane.pb -> profile.hlo.txt.gz
        with gzip.open(program_copy, "wt") as f:  # the kernels' names in the trace are its instructions
            f.write(program)
        summary["kept_program"] = str(program_copy)
    summary.update(compile_s=compile_s, step_s=step_s, images_per_s=point.batch / step_s,
                   traced_steps=steps + 2, what=point.what, batch=point.batch, remat=point.remat,
                   overrides=point.overrides)
    shutil.rmtree(trace_dir, ignore_errors=True)
    return {"environment": environment(), "profile": summary}


def child_main(args: argparse.Namespace) -> None:
    """Run the points of ``--child`` (a JSON list) in this process, each result to
    ``<results_dir>/<name>.json`` as soon as it is measured."""
    from vertex_jax.auto_setting import assume_accelerator
    from vertex_jax.compile_cache import enable_compilation_cache

    if args.dry:  # rehearse the GPU's programs: auto settings (packing, flat moments, BatchNorm) in their GPU form
        assume_accelerator(True)
    enable_compilation_cache(args.cache_dir, shipped_autotuning=False)  # a cold point starts cold
    out = Path(args.results_dir)
    for spec in json.loads(args.child):
        point = Point(**spec)
        print(f"[gpu_check] {point.name}: start", flush=True)
        t0 = time.perf_counter()
        try:
            run = _run_profile_point if point.kind == "profile" else _run_jax_point
            result = run(point, args, out)
            result["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - one failed point (OOM, say) must not end the check
            result = {"status": "error", "error": f"{type(e).__name__}: {e}"[:4000]}
        result["wall_s"] = time.perf_counter() - t0
        (out / f"{point.name}.json").write_text(json.dumps(result))
        print(f"[gpu_check] {point.name}: {result['status']} in {result['wall_s']:.1f} s", flush=True)

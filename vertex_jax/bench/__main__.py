"""Command line of :mod:`vertex_jax.bench` (see the package docstring)."""

from __future__ import annotations

if __name__ == "__main__":  # first, before the heavy imports: see vertex_jax.hugepages
    from vertex_jax.hugepages import restart_with_hugepages

    restart_with_hugepages()

import functools
import itertools
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from vertex_jax.bench.loop import format_input_rates, measure_loop
from vertex_jax.bench.compile_time import format_compile_table, measure_compile
from vertex_jax.bench.measure import measure, measure_isolated, run_isolated
from vertex_jax.bench.peer import format_comparison, run_peer
from vertex_jax.bench.record import document, format_table, host
from vertex_jax.cli import absl_flags_parser, user_errors
from vertex_jax.config_files import config_path
from vertex_jax.compile_cache import enable_compilation_cache
from vertex_jax.xla_flags import DEFAULT_PRESET, apply_preset
from vertex_jax.models.build import tasks_of

_CONFIG = config_flags.DEFINE_config_file("config", str(config_path("xray")),
                                          "Run configuration: a shipped name (xray, vfa) or a file, [:variant].")
_WHAT = flags.DEFINE_enum("what", "train", ["train", "eval", "loop", "compile", "compile-eval", "input",
                                           "export", "all"],
                          "Which step to time; compile: a cold compile of the training step, "
                          "nothing run (vertex_jax.bench.compile_time), compile-eval: of the "
                          "evaluation step; "
                          "loop: the training loop itself (train_and_evaluate "
                          "capped at --steps steps, vertex_jax.bench.loop) beside the isolated "
                          "training step; input: the input pipeline (vertex_jax.bench.input); "
                          "export: the exported ONNX model on onnxruntime against JAX on the CPU "
                          "(vertex_jax.bench.export; --batch sizes, default 1,2); all: train, eval "
                          "and input.")
_COMPILING = {"compile": "train", "compile-eval": "eval"}  # --what -> the step compiled
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")
_BATCH = flags.DEFINE_list("batch", [], "Global batch sizes to sweep (default: the config's).")
_DTYPE = flags.DEFINE_list("dtype", [], "Compute dtypes to sweep (model.dtype).")
_REMAT = flags.DEFINE_list("remat", [], "Rematerialisation settings to sweep (model.remat).")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "Any other config field to sweep: "
                                   "--sweep=model.depthwise=conv,shifts (repeatable).")
_ISOLATE = flags.DEFINE_bool("isolate", True, "Measure each point in a fresh process (own "
                             "peak memory and compile time).")
_TARGET = flags.DEFINE_enum("target", "", ["", "h100", "h200"], "With --what=compile(-eval): compile "
                            "for this GPU without one (needs vertex_jax[gpu]; nothing runs or is "
                            "autotuned; vertex_jax.bench.gpu_target).")
_JSON = flags.DEFINE_string("json", "", "Also write the results here.")
_PEER = flags.DEFINE_enum("peer", "", ["", "torch"], "Also train the same network with this "
                          "framework (benchmarks/torch_peer.py) at each training point.")
_PEER_FLAGS = flags.DEFINE_multi_string("peer_flags", [""], "Extra flags of one peer "
                                        "configuration, e.g. '--compile' (repeatable: one run each).")
_INPUT_FLAGS = flags.DEFINE_string("input_flags", "", "Extra flags for the input benchmark, "
                                   "e.g. '--images 16 --batch 8'.")


def _convert(current: Any, text: str, key: str) -> Any:
    """``text`` as the type of the config field's current value."""
    kind = type(current)
    try:
        if kind is bool:
            return {"true": True, "1": True, "false": False, "0": False}[text.lower()]
        if kind in (int, float, str):
            return kind(text)
    except (KeyError, ValueError):
        raise app.UsageError(f"{key}: {text!r} is not a valid {kind.__name__}") from None
    raise app.UsageError(f"{key}: cannot sweep a field of type {kind.__name__}")


def sweep_axes() -> list[tuple[str, list[str]]]:
    """(config field or "batch", values) for every swept axis."""
    axes = [("batch", _BATCH.value), ("model.dtype", _DTYPE.value), ("model.remat", _REMAT.value)]
    for spec in _SWEEP.value:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise app.UsageError(f"--sweep expects field=value1,value2, got {spec!r}")
        axes.append((key, values.split(",")))
    return [(key, values) for key, values in axes if values]


def point_config(config: ml_collections.ConfigDict, what: str, point: dict[str, str]
                 ) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the sweep point's values set."""
    config = config.copy_and_resolve_references()
    for key, text in point.items():
        if key == "batch":
            field = "eval_batch_size" if _COMPILING.get(what, what) == "eval" else "batch_size"
            config[field] = _convert(config[field], text, "batch")
            continue
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise app.UsageError(f"--sweep: the config has no field {key!r}")
        node[leaf] = _convert(node[leaf], text, key)
    return config


def run_input(flags_text: str, repeats: int) -> dict[str, Any]:
    """The input-pipeline benchmark (``python -m vertex_jax.bench.input``), its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "input.json"
        subprocess.run([sys.executable, "-m", "vertex_jax.bench.input", "--repeats", str(repeats),
                        "--json", str(out), *shlex.split(flags_text)], check=True)
        return json.loads(out.read_text())


def run_export(config: ml_collections.ConfigDict, batches: list[str], repeats: int) -> dict[str, Any]:
    """The export-runtime benchmark (``python -m vertex_jax.bench.export``) on ``config``."""
    from vertex_jax.bench import export  # onnx, onnxruntime: the [export] extra

    try:
        sizes = [int(b) for b in batches] or [1, 2]
    except ValueError:
        raise app.UsageError(f"--batch: expected integers, got {batches}") from None
    if min(sizes) < 1 or repeats < 1:
        raise app.UsageError("--batch sizes and --repeats must be >= 1")
    results = export.run_bench(config, sizes, repeats)
    env = export.environment(0)
    print(export.format_results(results, env))
    return {"environment": env, "results": results}


def compare_with_peer(train_records: list[dict[str, Any]], config: ml_collections.ConfigDict
                      ) -> list[tuple[dict[str, Any], tuple[dict[str, Any], dict[str, Any]]]]:
    """(JAX record, (peer environment, peer record)) for every training record and peer
    configuration; the peer runs once per distinct shape (JAX-only options share it)."""
    shape = ("variant", "height", "width", "batch", "dtype", "remat")
    runs: dict[tuple, tuple[dict[str, Any], dict[str, Any]]] = {}
    pairs = []
    for r in train_records:
        for peer_flags in _PEER_FLAGS.value:
            key = (*(r[k] for k in shape), peer_flags)
            if key not in runs:
                runs[key] = run_peer(r, peer_flags, tasks=len(tasks_of(config)),
                                     augment=config.augment, steps=_STEPS.value,
                                     repeats=_REPEATS.value)
            pairs.append((r, runs[key]))
    return pairs


def format_loop_ratio(records: list[dict[str, Any]]) -> str:
    """One line per sweep point: the loop's images/s over the isolated step's."""
    steps = [r for r in records if r["what"] == "train"]
    loops = [r for r in records if r["what"] == "loop"]
    lines = []
    for step, loop in zip(steps, loops):
        label = ", ".join([f"batch {loop['batch']}", *(f"{k}={v}" for k, v in loop["options"].items())])
        lines.append(f"loop / step ({label}): {loop['images_per_s']:.3g} / {step['images_per_s']:.3g} "
                     f"images/s = {loop['images_per_s'] / step['images_per_s']:.1%}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    apply_preset(_CONFIG.value.get("xla_preset", DEFAULT_PRESET))  # spawned points inherit it
    enable_compilation_cache()  # here and in every spawned point (run_isolated)
    config = _CONFIG.value
    whats = {"all": ["train", "eval"], "loop": ["train", "loop"], "input": [], "export": []
             }.get(_WHAT.value, [_WHAT.value])
    if _PEER.value and "train" not in whats:
        raise app.UsageError("--peer compares training steps: use --what=train or all")
    compiling = _WHAT.value in _COMPILING
    if _TARGET.value and not compiling:
        raise app.UsageError("--target compiles for a GPU that is not here: use it with --what=compile(-eval)")
    axes = sweep_axes()
    if _WHAT.value == "export" and any(key != "batch" for key, _ in axes):
        raise app.UsageError("--what=export times the config as given: sweep only --batch "
                             "(set other fields with --config.FIELD=VALUE)")
    points = [dict(zip((k for k, _ in axes), values))
              for values in itertools.product(*(v for _, v in axes))]
    jobs = [(what, point, point_config(config, what, point))  # every point checked up front
            for what in whats for point in points]
    measure_fn = measure_isolated if _ISOLATE.value else measure
    compile_fn = functools.partial(run_isolated, measure_compile) if _ISOLATE.value else measure_compile
    environment, records, extra = host(), [], {}  # replaced by the measured process's
    for what, point, point_cfg in jobs:
        options = {k: v for k, v in point.items() if k not in ("batch", "model.dtype", "model.remat")}
        print(f"measuring {what} {point or '(config as given)'}", flush=True)
        if what in _COMPILING:
            environment, record = compile_fn(point_cfg, options=options, target=_TARGET.value,
                                             step=_COMPILING[what])
        elif what == "loop":
            environment, record, detail = measure_loop(point_cfg, steps=_STEPS.value,
                                                       repeats=_REPEATS.value, options=options,
                                                       isolate=_ISOLATE.value)
            extra.setdefault("loop_runs", []).append({"point": point, **detail})
        else:
            environment, record = measure_fn(point_cfg, what, steps=_STEPS.value,
                                             repeats=_REPEATS.value, options=options)
        records.append(record)
    if records:
        print(f"\n{environment['devices']}x {environment['device']} ({environment['platform']}), "
              f"{config.model.variant} at {config.data.canvas[0]}x{config.data.canvas[1]}")
        if compiling:
            print(format_compile_table(records))
        else:
            print(format_table(records, extra=sorted({k for r in records for k in r["options"]})))
        if environment["platform"] == "cpu" and not compiling:
            print("peak MiB: no allocator statistics on CPU (null); XLA MiB is XLA's memory plan.")
        if _WHAT.value == "loop":
            print("\n" + format_loop_ratio(records) + "\n" + format_input_rates(extra["loop_runs"]))
    if _PEER.value:
        pairs = compare_with_peer([r for r in records if r["what"] == "train"], config)
        extra["peer_environment"] = pairs[0][1][0]
        records += list({id(peer): peer for _, (_, peer) in pairs}.values())
        print("\n" + format_comparison([(r, peer) for r, (_, peer) in pairs]))
    if _WHAT.value in ("input", "all"):
        extra["input"] = run_input(_INPUT_FLAGS.value, _REPEATS.value)
    if _WHAT.value == "export":
        extra["export"] = run_export(config, _BATCH.value, _REPEATS.value)
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(document(environment, records, **extra), indent=2))


if __name__ == "__main__":
    app.run(user_errors(main), flags_parser=absl_flags_parser())

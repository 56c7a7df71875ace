"""Throughput tooling: the bench CLI and its JSON, the analytic FLOP counter, the PyTorch peer."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vertex_jax.bench.gpu_target import cuda_plugin_installed
from vertex_jax.bench.measure import STEPS_PER_EPOCH
from vertex_jax.compile_cache import (AUTOTUNE_DIR, archive_autotune_results, seed_autotune_results,
                                     shipped_autotune_results)
from vertex_jax.bench.flops import Flops, count_flops
from vertex_jax.bench.peer import peer_command
from vertex_jax.bench.record import FIELDS
from vertex_jax.config_files import load_config
from vertex_jax.train.augment import warp
from vertex_jax.train import metrics

ROOT = Path(__file__).resolve().parents[1]


def run_bench(tmp_path: Path, *flags: str, devices: int, env: dict | None = None) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "vertex_jax.bench", "--config=configs/xray.py:tiny",
                           "--steps=1", "--repeats=1", f"--json={out}", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
                          | (env or {}))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_cli_sweep_writes_one_record_per_point(tmp_path):
    result, stdout = run_bench(tmp_path, "--what=eval", "--batch=4,8", devices=2)
    env, records = result["environment"], result["records"]
    assert env["platform"] == "cpu" and env["devices"] == 2
    assert {"python", "jax", "jaxlib", "flax", "optax"} <= set(env["versions"])
    assert "--batch=4,8" in result["command"]
    assert [r["batch"] for r in records] == [4, 8]
    for r in records:
        assert tuple(r) == FIELDS
        assert r["framework"] == "jax" and r["what"] == "eval" and r["variant"] == "tiny"
        assert (r["height"], r["width"], r["devices"]) == (64, 32, 2)
        assert r["images_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        assert len(r["step_s_runs"]) == 1 and r["compile_s"] > 0
        assert r["peak_bytes_per_device"] is None  # CPUs keep no allocator statistics
        assert r["xla_flops_per_step"] > 0 and r["xla_bytes_per_step"] > 0
        assert r["xla_memory_bytes_per_device"] > 0
    # The forward pass is linear in the batch: twice the batch, exactly twice the FLOPs.
    assert records[1]["model_flops_per_step"] == 2 * records[0]["model_flops_per_step"] > 0
    assert "images/s" in stdout and "no allocator statistics on CPU" in stdout


def test_cli_times_the_loop_beside_the_step(tmp_path):
    result, stdout = run_bench(tmp_path, "--what=loop", "--steps=3", devices=2)
    step, loop = result["records"]
    assert (step["what"], loop["what"]) == ("train", "loop")
    for r in (step, loop):
        assert tuple(r) == FIELDS and r["batch"] == 8 and r["devices"] == 2
        assert r["cpu_user_s_per_step"] > 0 and r["cpu_system_s_per_step"] >= 0
    (runs,) = result["loop_runs"]
    # one epoch of 3 steps: the first only starts the loop's clock
    assert [r["steps_timed"] for r in runs["runs"]] == [2] and runs["runs"][0]["status"] == "completed"
    assert loop["images_per_s"] == pytest.approx(runs["runs"][0]["images_per_s"])
    # every timed step of the loop's clock, and the host's dispatch and batch wait per step
    assert len(loop["step_s_each"]) == 2 and sum(loop["step_s_each"]) == pytest.approx(2 * loop["step_s"])
    assert loop["dispatch_s"] > 0 and runs["runs"][0]["dispatch_s"] == loop["dispatch_s"]
    assert runs["runs"][0]["wait_s"] >= 0 and "ms for its batch and dispatched in" in stdout
    # no data given: random canvases of the config's size, one step program's epoch of them
    # (STEPS_PER_EPOCH training batches) plus one evaluation batch
    assert runs["data"]["source"] == "random canvases"
    assert runs["data"]["canvases"] == (STEPS_PER_EPOCH + 1) * 8 and runs["data"]["canvases_per_s"] > 0
    assert runs["input"]["images_per_s"] > 0 and "input alone (config as given): cache -> device batch" in stdout
    ratio = loop["images_per_s"] / step["images_per_s"]
    assert f"= {ratio:.1%}" in stdout


def test_loop_clock_leaves_out_the_first_step_after_a_pause(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    clock = metrics.Throughput()
    clock.dispatched(9.0), clock.waited(9.0)  # before the clock starts: not kept
    for t, action in [(0, "tick"), (2, "tick"), (3, "tick"),  # the first only starts the clock
                      (3, "pause"), (50, "tick"), (54, "tick")]:  # validation, saves left out
        now[0] = float(t)
        clock.pause() if action == "pause" else clock.tick(8)
        clock.dispatched(t / 100), clock.waited(t / 1000)
    assert (clock.steps, clock.images, clock.seconds) == (3, 24, 2 + 1 + 4)
    d = clock.to_dict()
    assert d["images_per_s"] == pytest.approx(24 / 7)
    assert d["step_s_each"] == [2, 1, 4]  # each timed step's interval
    # the host's dispatch and batch wait, kept while the clock runs (not after the pause)
    assert d["dispatch_s_each"] == [0.0, 0.02, 0.03, 0.5, 0.54]
    assert d["wait_s_each"] == [0.0, 0.002, 0.003, 0.05, 0.054]
    assert (d["step_s_median"], d["dispatch_s_median"], d["wait_s_median"]) == (2, 0.03, 0.003)
    assert clock.to_dict(each=False) == {k: v for k, v in d.items() if not k.endswith("_each")}


def test_loop_clock_keeps_the_first_steps_of_a_long_run(monkeypatch):
    monkeypatch.setattr(metrics.Throughput, "KEPT_STEPS", 3)
    clock = metrics.Throughput()
    for _ in range(6):
        clock.tick(1), clock.dispatched(0.1), clock.waited(0.2)
    d = clock.to_dict()
    assert d["steps_timed"] == 5 and len(d["step_s_each"]) == len(d["dispatch_s_each"]) == len(d["wait_s_each"]) == 3


@pytest.mark.slow
def test_cli_times_the_export_runtimes(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax2onnx")
    result, stdout = run_bench(tmp_path, "--what=export", "--batch=1", devices=1)
    assert result["records"] == [] and result["export"]["environment"]["jax_backend"] == "cpu"
    (row,) = result["export"]["results"]
    assert (row["variant"], row["canvas"], row["batch"]) == ("tiny", [64, 32], 1)
    assert row["jax_images_per_s"] > 0 and row["onnxruntime_images_per_s"] > 0
    assert row["max_abs_diff_probabilities"] < 1e-4
    assert "tiny 64x32 batch 1: onnxruntime" in stdout


def _conv(x, k, stride=1, groups=1):
    return jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME", feature_group_count=groups,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _small_net(params, x):
    """3x3 conv 2->4, stride-2 3x3 depthwise, global pool, dense 4->3."""
    h = jnp.tanh(_conv(x, params["conv"]))
    h = jnp.tanh(_conv(h, params["dw"], stride=2, groups=4))
    return jnp.mean(h, axis=(1, 2)) @ params["dense"]


def test_flop_counter_matches_a_hand_count():
    params = {"conv": jnp.ones((3, 3, 2, 4)), "dw": jnp.ones((3, 3, 1, 4)), "dense": jnp.ones((4, 3))}
    x = jnp.ones((2, 8, 6, 2))
    conv = 2 * (2 * 8 * 6 * 4) * (3 * 3 * 2)  # 2 x outputs x taps
    dw = 2 * (2 * 4 * 3 * 4) * (3 * 3)  # stride 2: 4x3 outputs; one input channel per group
    dense = 2 * 2 * 4 * 3
    assert count_flops(_small_net, params, x) == Flops(conv=conv + dw, dot=dense)
    # Gradient w.r.t. the parameters: forward, every weight gradient, and the input gradient
    # of every layer but the first (the stride-2 one a transposed convolution, zeros not counted).
    grad = jax.grad(lambda p: jnp.sum(_small_net(p, x)))
    assert count_flops(grad, params) == Flops(conv=2 * conv + 3 * dw, dot=3 * dense)


def test_flop_counter_walks_nested_programs():
    w = jnp.ones((5, 5))
    matmul = 2 * 5 * 5 * 5

    def scanned(x):
        return jax.lax.scan(lambda c, _: (jax.checkpoint(lambda c: c @ w)(c), None), x, None, length=3)[0]
    assert count_flops(scanned, jnp.ones((5, 5))).dot == 3 * matmul
    branches = lambda p, x: jax.lax.cond(p, lambda x: x @ w @ w, lambda x: x @ w, x)  # noqa: E731
    assert count_flops(branches, True, jnp.ones((5, 5))).dot == 2 * matmul  # costlier branch


def test_peer_command_matches_the_jax_point(tmp_path):
    record = {"variant": "b0", "height": 256, "width": 128, "batch": 16, "dtype": "bfloat16",
              "remat": True}
    augment = load_config("configs/xray.py").augment
    cmd = peer_command(record, "--compile --threads=1", tasks=2, augment=augment, steps=3,
                       repeats=2, json_path=tmp_path / "p.json")
    args = " ".join(cmd[2:])
    for part in ("--variant b0", "--height 256", "--width 128", "--batch 16", "--tasks 2",
                 "--amp bf16", "--steps 3", "--repeats 2", "--max-rotation 30.0", "--flip 0.0",
                 "--grad-checkpointing", "--compile --threads=1"):
        assert part in args, part
    augment.enabled = False
    assert "--no-augment" in peer_command(record, "", tasks=1, augment=augment, steps=1, repeats=1,
                                          json_path=tmp_path / "p.json")
    with pytest.raises(ValueError, match="float16"):
        peer_command(record | {"dtype": "float16"}, "", tasks=1, augment=augment, steps=1,
                     repeats=1, json_path=tmp_path / "p.json")


needs_torch = pytest.mark.skipif(
    not (importlib.util.find_spec("torch") and importlib.util.find_spec("timm")),
    reason="the PyTorch peer needs torch and timm (pip install torch timm)")


@needs_torch
def test_peer_warp_matches_the_jax_augmentation():
    import torch
    spec = importlib.util.spec_from_file_location("torch_peer", ROOT / "benchmarks" / "torch_peer.py")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    image = np.random.default_rng(0).random((2, 24, 16), np.float32)
    angles, scales = np.array([17.0, -25.0], np.float32), np.array([1.1, 0.9], np.float32)
    got = peer.warp(torch.from_numpy(image)[:, None], torch.from_numpy(angles), torch.from_numpy(scales))
    for i in range(2):
        expected = warp(jnp.asarray(image[i]), angles[i], scales[i])
        np.testing.assert_allclose(got[i, 0].numpy(), np.asarray(expected), atol=1e-5)


@needs_torch
def test_peer_trains_the_same_network_side_by_side(tmp_path):
    result, stdout = run_bench(tmp_path, "--what=train", "--batch=4", "--peer=torch",
                               "--peer_flags=--threads=1", "--noisolate",
                               "--config.augment.enabled=false", devices=1)
    jax_rec, torch_rec = result["records"]
    assert (jax_rec["framework"], torch_rec["framework"]) == ("jax", "torch")
    assert tuple(torch_rec) == FIELDS
    for key in ("what", "variant", "height", "width", "batch", "dtype", "remat"):
        assert torch_rec[key] == jax_rec[key], key
    # Same network: same parameter count, and the same convolution + matmul FLOPs counted
    # independently (jaxpr walk vs torch.utils.flop_counter).
    assert torch_rec["params"] == jax_rec["params"]
    assert torch_rec["model_flops_per_step"] == jax_rec["model_flops_per_step"] > 0
    assert torch_rec["options"]["augment"] is None and torch_rec["options"]["threads"] == 1
    assert torch_rec["images_per_s"] > 0 and torch_rec["xla_flops_per_step"] is None
    assert result["peer_environment"]["versions"]["torch"]
    assert "JAX/peer" in stdout and "torch eager 1 thr" in stdout


# The one-shot GPU check (vertex_jax.bench.gpu_check), run here in its dry mode.

DRY_POINTS = ("jax-train-b2,peer-compile-cl-b2,loop-b2,jax-train-b2-recompute,jax-eval-b2,combo-b2,"
              "profile-combo-b2")


def test_gpu_check_dry_mode_writes_one_complete_json(tmp_path):
    """Tiny config, batch 2, one step, each point a time-boxed child process with the lent
    machine's missing packages (grain, ml_collections, pydicom, ...) blocked, and the GPU's
    forms of the auto settings (packed state, flat moments, fused BatchNorm)."""
    out, caches, user_cache = tmp_path / "gpu_check.json", tmp_path / "caches", tmp_path / "user-cache"
    # XLA:CPU autotunes nothing: a result as XLA:GPU would have left it, to be brought back
    (caches / "main" / AUTOTUNE_DIR).mkdir(parents=True)
    (caches / "main" / AUTOTUNE_DIR / "r.textproto").write_text("algorithm { algo_id: 1 }\n")
    archive = tmp_path / "out" / "autotune_results.tar.gz"
    proc = subprocess.run([sys.executable, "-m", "vertex_jax.bench.gpu_check", "--dry",
                           f"--points={DRY_POINTS}", f"--json={out}", f"--cache-root={caches}",
                           f"--keep-autotune={archive}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env=os.environ | {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1",
                                            "VERTEX_COMPILE_CACHE": str(user_cache)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The points compile into the check's own cache (a cold start is cold, the loop bench
    # finds the steps compiled before it), never into the user's.
    assert any(f.name.startswith("jit_step") for f in (caches / "main").iterdir())
    assert not user_cache.exists() or not any(user_cache.rglob("jit_step*"))
    doc = json.loads(out.read_text())
    errors = {p["name"]: p.get("error") for p in doc["points"] if p["status"] not in ("ok", "unavailable")}
    assert not errors, errors
    assert doc["mode"] == "dry" and "--dry" in doc["command"]
    assert doc["autotune_results"] == {"files": 1, "archive": str(archive)} and archive.is_file()
    cold = next(r for r in doc["targets"] if r["target"] == "first compile, cold cache")
    assert cold["source"] == "jax-train-b2" and cold["value"] > 0 and "first compile, cold cache" in proc.stdout
    assert all(row["met"] is None for row in doc["targets"])  # a CPU's figures meet no GPU goal
    env = doc["environment"]
    assert env["platform"] == "cpu" and env["versions"]["jax"] and env["config_loader"] == "plain"
    assert "ml_collections" in env["blocked_imports"] and "grain" in env["blocked_imports"]
    assert doc["config"]["variant"] == "tiny" and doc["config"]["dtype"] == "bfloat16" and doc["config"]["batch"] == 2
    status = {p["name"]: p["status"] for p in doc["points"]}
    assert list(status) == DRY_POINTS.split(",")
    assert {status[k] for k in ("jax-train-b2", "jax-train-b2-recompute", "jax-eval-b2", "combo-b2",
                                "profile-combo-b2")} == {"ok"}
    assert status["peer-compile-cl-b2"] in ("ok", "unavailable")  # torch is optional here
    assert status["loop-b2"] == "unavailable" and doc["rerun"] is None
    forms = {p["name"]: p["forms"] for p in doc["points"] if "forms" in p}
    assert forms["jax-train-b2"] == {"accelerator_forms": True, "pack_state": True, "optim.flatten": True}
    assert all(p["wall_s"] >= 0 for p in doc["points"])
    jax_records = [r for r in doc["records"] if r["framework"] == "jax"]
    assert [(r["what"], r["options"]["point"]) for r in jax_records] == [
        ("train", "jax-train-b2"), ("train", "jax-train-b2-recompute"), ("eval", "jax-eval-b2"),
        ("train", "combo-b2")]
    # The lever's verdict, and the combination made of exactly the levers that won.
    (verdict,) = doc["levers"].values()
    assert verdict["overrides"] == {"model.recompute": "elementwise"} and verdict["ratio"] > 0
    combo = next(p for p in doc["points"] if p["name"] == "combo-b2")
    assert combo["overrides"] == (verdict["overrides"] if verdict["wins"] else {})
    for r in doc["records"]:
        assert tuple(r) == FIELDS
        for key in ("images_per_s", "step_s", "model_flops_per_step"):
            assert np.isfinite(r[key]) and r[key] > 0, key
    for r in jax_records:  # the PyTorch eager peer compiles nothing: its compile_s may be 0
        assert r["compile_s"] > 0 and r["xla_memory_bytes_per_device"] > 0 and r["dtype"] == "bfloat16"
        assert 0 < r["lower_s"] < r["compile_s"]  # tracing + lowering, then XLA's share
        assert len(r["step_s_each"]) == 1 and r["dispatch_s"] > 0 and r["run_spread"] == 0
    profile = doc["profile"]
    assert profile["status"] == "ok", profile["errors"]
    assert profile["source"].startswith("host") and profile["events"] > 0
    assert np.isfinite(profile["images_per_s"]) and profile["images_per_s"] > 0
    assert profile["top_ops"] and profile["top_kinds"]
    for op in profile["top_ops"]:
        assert op["count"] > 0 and np.isfinite(op["ms_per_step"]) and 0 < op["share"] <= 1
    assert sum(op["share"] for op in profile["top_ops"]) <= 1 + 1e-9
    assert "top op kinds (profile" in proc.stdout
    # The traced program's kernels joined to the trace by name: their bytes against their time.
    timed = profile["bytes_and_time"]
    assert timed["matched_share"] > 0.5 and timed["est_gb_per_step"] > 0
    assert all(r["ms_per_step"] > 0 and r["est_gb_per_s"] >= 0 for r in timed["by_kind"])


def test_the_seeded_point_starts_from_the_first_points_autotuning_and_the_check_brings_it_back(tmp_path):
    """The seeded point's cache holds the first point's autotuning results and nothing
    else; the archive the check brings back, unpacked into a shipped folder, seeds a fresh
    cache with the same results (the path from a lent GPU to a user's first compile)."""
    import tarfile

    from vertex_jax.bench.gpu_check import _seed
    from vertex_jax.bench.gpu_points import plan

    root = tmp_path / "caches"
    results = {"a.textproto": "algorithm { algo_id: 3 }\n", "x/b.textproto": "gemm { algorithm: 7 }\n"}
    for name, text in results.items():
        (root / "main" / AUTOTUNE_DIR / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "main" / AUTOTUNE_DIR / name).write_text(text)
    (root / "main" / "jit_step-cache").write_text("an executable")  # not an autotuning result
    for xla in ("fast-compile", "quick-compile"):  # the check's preset: the first point's keys
        points = {p.name: p for p in plan(dry=False, xla=xla)}
        seeded = points["jax-train-b32-autotune-seeded-cold"]
        assert seeded.xla == points["jax-train-b32"].xla == xla and seeded.cache != "main"
    assert _seed(seeded, root) == 2 and _seed(points["jax-train-b32-warm"], root) is None
    assert sorted(p.relative_to(root / seeded.cache).as_posix() for p in (root / seeded.cache).rglob("*")
                  if p.is_file()) == sorted(f"{AUTOTUNE_DIR}/{n}" for n in results)
    archive = tmp_path / "out" / "autotune_results.tar.gz"
    assert archive_autotune_results(root / "main", archive) == 2
    shipped = tmp_path / "autotune_results"
    with tarfile.open(archive) as tar:
        tar.extractall(shipped, filter="data")
    fresh = tmp_path / "fresh-cache"
    assert seed_autotune_results(shipped_autotune_results(shipped), fresh) == 2
    assert {n: (fresh / AUTOTUNE_DIR / n).read_text() for n in results} == results
    assert archive_autotune_results(root / "empty", tmp_path / "none.tar.gz") == 0
    assert not (tmp_path / "none.tar.gz").exists()


def test_the_targets_are_read_off_a_gpu_check_document():
    """The H200 run's own JSON: each figure recomputed here from its records; a figure
    whose point did not run is not measured, never missed; then the points it lacked."""
    from vertex_jax.bench.gpu_verdicts import format_verdicts, verdicts

    doc = json.loads((ROOT / "benchmarks/results/gpu_check_h200_run1.json").read_text())
    point = {r["options"]["point"]: r for r in doc["records"]}
    peer = point["peer-compile-cl-b32"]
    rows = {r["target"]: r for r in verdicts(doc)}
    assert rows["training / torch.compile (baseline)"]["value"] == (
        point["jax-train-b32"]["images_per_s"] / peer["images_per_s"])
    fastest = rows["training / torch.compile (fastest point)"]
    assert fastest["source"].startswith("jax-train-b32-pack") and fastest["met"]
    assert rows["first compile, cold cache"]["value"] == point["jax-train-b32"]["compile_s"] > 60
    assert rows["first compile, cold cache"]["met"] is False
    assert rows["compile in a second process"]["met"] is True
    memory = rows["training memory, GiB (baseline)"]
    assert memory["value"] * 2**30 == point["jax-train-b32"]["peak_bytes_per_device"] and memory["met"] is False
    for target in ("loop / isolated step", "input alone, images/s", "first compile, shipped autotuning results"):
        assert rows[target]["value"] is None and rows[target]["met"] is None, target
    assert "not measured" in format_verdicts(list(rows.values()))

    # The points it lacked: the loop, a seeded cold compile killed while timing, evaluation at 128.
    step = {**point["jax-train-b32"], "what": "train", "images_per_s": 300.0}
    doc["loop"] = {"records": [step, {**step, "what": "loop", "images_per_s": 290.0}],
                   "loop_runs": [{"input": {"images_per_s": 1500.0}}]}
    doc["points"].append({"name": "jax-train-b32-autotune-seeded-cold", "kind": "jax", "what": "train",
                          "batch": 32, "xla": "fast-compile", "status": "timeout", "compile_s": 41.0,
                          "seeded_autotune_results": 158})
    doc["records"].append({**point["jax-eval-b32"], "batch": 128, "images_per_s": 1600.0,
                           "options": {"point": "jax-eval-b128"}})
    rows = {r["target"]: r for r in verdicts(doc)}
    assert rows["loop / isolated step"]["value"] == 290 / 300 and rows["loop / isolated step"]["met"]
    # two loop points: the better ratio is the figure, the other named beside it
    threaded = {**doc["loop"], "records": [step, {**step, "what": "loop", "images_per_s": 297.0}]}
    doc["loops"] = {"loop-b32": doc["loop"], "loop-b32-dispatch-thread": threaded}
    loop_row = {r["target"]: r for r in verdicts(doc)}["loop / isolated step"]
    assert loop_row["value"] == 297 / 300 and loop_row["source"] == "loop-b32-dispatch-thread"
    assert loop_row["note"] == f"a setting off by default, loop-b32 {290 / 300:.3f}"
    threaded["loop_runs"] = [{"runs": [{"stall": {"period": 10, "slowest_position_s": 0.1, "median_s": 0.0925}}]}]
    loop_row = {r["target"]: r for r in verdicts(doc)}["loop / isolated step"]
    assert loop_row["note"].startswith("every 10 steps the slowest 100.0 ms against a median 92.5, a setting off")
    rows = {r["target"]: r for r in verdicts(doc)}
    assert rows["input alone, images/s"]["met"] is True
    seeded = rows["first compile, shipped autotuning results"]
    assert seeded["value"] == 41.0 and seeded["met"] and "158 autotuning results given" in seeded["note"]
    assert rows["evaluation, images/s"]["source"] == "jax-eval-b128" and rows["evaluation, images/s"]["met"]

    # a rerun of evaluation points only: the targets still name the check's own points
    rerun = {"config": {**doc["config"], "batch": 32}, "records": [doc["records"][-1]],
             "points": [{"name": "jax-eval-b128", "kind": "jax", "what": "eval", "batch": 128, "status": "ok"}]}
    rows = {r["target"]: r for r in verdicts(rerun)}
    assert rows["first compile, cold cache"]["source"] == "jax-train-b32"
    assert rows["loop / isolated step"]["source"] == "loop-b32" and rows["evaluation, images/s"]["met"]


def test_gpu_check_config_matches_ml_collections():
    """The lent machine has no ml_collections: its stand-in builds the same configs."""
    from vertex_jax.bench.plain_config import plain_config

    for spec in ("configs/xray.py", "configs/xray.py:demo", "configs/xray.py:tiny"):
        plain = plain_config(spec)
        assert plain.to_dict() == load_config(spec).to_dict(), spec
        copy = plain.copy_and_resolve_references()
        copy.model.remat = not plain.model.remat
        assert copy.model.remat != plain.model.remat and "depthwise" in copy.model


def test_memory_fit_recovers_fixed_and_per_image_bytes():
    from vertex_jax.bench.memory_plan import fit_memory, largest_batch

    fit = fit_memory([2, 4, 8], [1e9 + 2 * 3e9, 1e9 + 4 * 3e9, 1e9 + 8 * 3e9])
    assert fit["per_image_bytes"] == pytest.approx(3e9) and fit["fixed_bytes"] == pytest.approx(1e9)
    assert fit["max_relative_residual"] == pytest.approx(0, abs=1e-12)
    assert largest_batch(fit, 80e9) == 26  # (80 - 1) / 3


def test_residuals_command_splits_the_saved_activations_by_kind(tmp_path, capsys):
    """``python -m vertex_jax.bench.residuals`` on the tiny config: kinds add up to the
    total, both settings keep the same convolution outputs, and ``elementwise`` keeps
    no BatchNorm output inside a block and no gated input."""
    from vertex_jax.bench.residuals import KINDS, main

    doc = main(["--config", "configs/xray.py:tiny", "--recompute", "none,elementwise,elementwise:2",
                "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text())["bytes_per_image"] == doc["bytes_per_image"]
    kept, recomputed = doc["bytes_per_image"]["none"], doc["bytes_per_image"]["elementwise"]
    sizes = doc["bytes_per_image_by_size"]
    for setting, table in sizes.items():
        assert sum(v for k, v in table.items() if k != "total") == pytest.approx(table["total"])
        assert table["total"] == pytest.approx(doc["bytes_per_image"][setting]["total"])
    # recomputing the first two stages only: the largest maps after the input canvas
    # (maps[0]), the stem's and stage 0's (maps[1]), shrink as with every stage recomputed,
    # the smallest (the last stages') stay as kept,
    # and no size keeps more than with nothing recomputed
    maps = [k for k in sizes["none"] if "x" in k]
    early, every = sizes["elementwise:2"], sizes["elementwise"]
    assert early[maps[1]] == pytest.approx(every[maps[1]]) and early[maps[1]] < sizes["none"][maps[1]]
    assert early[maps[-1]] == pytest.approx(sizes["none"][maps[-1]]) and early[maps[-1]] > every[maps[-1]]
    for size in maps:
        assert every.get(size, 0.0) <= early.get(size, 0.0) + 1e-9 <= sizes["none"][size] + 2e-9, size
    assert recomputed["total"] < doc["bytes_per_image"]["elementwise:2"]["total"] < kept["total"]
    for table in (kept, recomputed):
        assert sum(v for k, v in table.items() if k != "total") == pytest.approx(table["total"])
    conv, bn_out, gated, _ = (kind for kind, _ in KINDS)
    assert recomputed[conv] == kept[conv] > 0
    assert kept[gated] > 0 and recomputed[gated] == 0
    assert recomputed[bn_out] < 0.1 * kept[bn_out]  # the stem's and head's stay (outside blocks)
    assert recomputed["total"] < 0.6 * kept["total"]
    out = capsys.readouterr().out
    assert "elementwise:2" in out and "by feature-map size" in out


def test_program_sizes_count_the_entry_computations_kernels():
    """One elementwise fusion is one kernel; a second, independent result (a matrix product)
    adds one; parameters, tuples and constants launch nothing."""
    from vertex_jax.bench.compile_time import program_sizes

    x = jnp.ones((64, 64), jnp.float32)

    def sizes(fn):
        lowered = jax.jit(fn).lower(x)
        return program_sizes(lowered.as_text(), lowered.compile().as_text())
    one = sizes(lambda a: jnp.sin(a) * 2.0 + 1.0)
    two = sizes(lambda a: (jnp.sin(a) * 2.0 + 1.0, a @ a.T))
    assert one["kernels"] == 1 and two["kernels"] == 2
    assert two["stablehlo_ops"] > one["stablehlo_ops"] >= 3  # sine, multiply, add


@pytest.mark.parametrize("name", ["elementwise", "slices of a packed vector", "two results", "reduction"])
def test_kernel_bytes_agree_with_xla_cost_analysis_on_cpu(name):
    """The bytes estimated from the program text against XLA:CPU's own cost analysis of
    the same compiled program (which a described GPU lacks): operands and results, a
    sliced operand counted by its slices. XLA also counts a few bytes of scalars."""
    from vertex_jax.bench.hlo_kernels import kernel_summary

    a, v = jnp.ones((256, 256), jnp.float32), jnp.ones((100_000,), jnp.float32)
    fn, args = {
        "elementwise": (lambda a, b: a * b + 1.0, (a, a)),
        "slices of a packed vector": (lambda v: (v[:1000] * 2.0, v[5000:7000] + 1.0), (v,)),
        "two results": (lambda a: (jnp.sin(a) * 2.0 + 1.0, a @ a.T), (a,)),
        "reduction": (lambda a: jnp.sum(a * a, axis=0), (a,)),
    }[name]
    compiled = jax.jit(fn).lower(*args).compile()
    estimate = kernel_summary(compiled.as_text())["kernel_bytes"]
    assert abs(estimate - compiled.cost_analysis()["bytes accessed"]) <= 64
    if name == "slices of a packed vector":
        assert estimate < 0.1 * v.nbytes  # not the whole vector per slice


_GPU_TEXT = """HloModule step

%fused_slice (param_0.1: f32[100]) -> f32[10] {
  %param_0.1 = f32[100]{0} parameter(0)
  ROOT %slice.1 = f32[10]{0} slice(%param_0.1), slice={[0:10]}
}

ENTRY %main (p0: f32[100], p1: bf16[8,4,4,16], w: bf16[16,1,1,16]) -> bf16[8,4,4,16] {
  %p0 = f32[100]{0} parameter(0)
  %p1 = bf16[8,4,4,16]{3,2,1,0} parameter(1)
  %w = bf16[16,1,1,16]{3,2,1,0} parameter(2)
  %wrapped_slice = f32[10]{0} fusion(%p0), kind=kLoop, calls=%fused_slice
  %cudnn-conv.1 = (bf16[8,4,4,16]{3,2,1,0}, u8[1024]{0}) custom-call(%p1, %w), window={size=1x1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %get-tuple-element.1 = bf16[8,4,4,16]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %cudnn-conv.2 = (bf16[8,4,4,16]{3,2,1,0}, u8[1024]{0}) custom-call(%get-tuple-element.1, %w), window={size=1x1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %get-tuple-element.2 = bf16[8,4,4,16]{3,2,1,0} get-tuple-element(%cudnn-conv.2), index=0
  %cudnn-conv.3 = (bf16[8,2,2,16]{3,2,1,0}, u8[1024]{0}) custom-call(%get-tuple-element.2, %w), window={size=1x1 stride=2x2}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %get-tuple-element.3 = bf16[8,2,2,16]{3,2,1,0} get-tuple-element(%cudnn-conv.3), index=0
  ROOT %custom-call.4 = bf16[8,2,2,16]{3,2,1,0} custom-call(%get-tuple-element.3), custom_call_target="Sharding"
}
"""


def test_bytes_against_time_joins_trace_events_to_kernels_by_name():
    """Per kind: the traced nanoseconds of its kernels over the steps, its estimated bytes
    per step, their ratio; events of no entry kernel count only in the unmatched share."""
    from vertex_jax.bench.hlo_kernels import Kernel
    from vertex_jax.bench.trace import _bytes_and_time

    kernels = [Kernel("%a.1", "loop_a", 1_000_000, 1_000_000), Kernel("%a.2", "loop_a", 2_000_000, 0),
               Kernel("%conv.1", "__cudnn$convForward", 4_000_000, 4_000_000, "key"),
               Kernel("%a.3", "loop_a", 5_000_000, 0)]  # not in the trace (inside a CUDA graph, say)
    events = [("a.1", "k", 1_000), ("a.2", "k", 3_000), ("conv.1", "k", 5_000)] * 2 + [("copy.9", "k", 8_000)]
    out = _bytes_and_time(events, kernels, steps=2)
    assert out["matched_share"] == pytest.approx(18_000 / 26_000)
    assert out["est_gb_per_step"] == pytest.approx(0.012) and out["unmatched_est_gb_per_step"] == pytest.approx(0.005)
    assert _bytes_and_time([("a.1", "k", 0)], kernels, 1)["by_kind"][0]["est_gb_per_s"] is None
    assert out["by_kind"] == [  # the most time first
        {"kind": "__cudnn$convForward", "ms_per_step": pytest.approx(0.005), "est_gb_per_step": pytest.approx(0.008),
         "est_gb_per_s": pytest.approx(0.008 / 5e-6)},
        {"kind": "loop_a", "ms_per_step": pytest.approx(0.004), "est_gb_per_step": pytest.approx(0.004),
         "est_gb_per_s": pytest.approx(0.004 / 4e-6)}]


def test_kernels_of_a_gpu_program_text():
    """A GPU program's text (the form ``--target`` compiles): a slice fusion reads its
    slice; a cuDNN call reads its operands and writes its result, not its scratch
    buffer; calls with the same shapes and window are one autotuning problem."""
    from vertex_jax.bench.hlo_kernels import entry_kernels, kernel_summary

    kernels = entry_kernels(_GPU_TEXT)
    conv_in, conv_out = 8 * 4 * 4 * 16 * 2 + 16 * 16 * 2, 8 * 4 * 4 * 16 * 2
    assert [(k.kind, k.bytes_in, k.bytes_out) for k in kernels] == [
        ("wrapped_slice", 40, 40), *[("__cudnn$convForward", conv_in, conv_out)] * 2,
        ("__cudnn$convForward", conv_in, conv_out // 4), ("Sharding", conv_out // 4, conv_out // 4)]
    summary = kernel_summary(_GPU_TEXT)  # a custom call that no library runs is no problem to tune
    assert summary["library_calls"] == {"__cudnn$convForward": {"calls": 3, "distinct": 2}}
    assert summary["library_problems"] == 2 and summary["kernels"] == 5


def test_xla_compile_phases_are_its_own_trace_events_largest_first():
    from vertex_jax.bench.compile_phases import traced_compile

    x = jnp.linspace(0.0, 1.0, 64 * 64).reshape(64, 64)
    compiled, phases = traced_compile(lambda: jax.jit(lambda a: jnp.sin(a) @ a.T + 1).lower(x).compile())
    np.testing.assert_allclose(np.asarray(compiled(x)), np.sin(np.asarray(x)) @ np.asarray(x).T + 1, rtol=1e-5)
    assert "backend_compile_and_load" in [p["name"] for p in phases]  # JAX's call of XLA's compiler
    assert [p["s"] for p in phases] == sorted((p["s"] for p in phases), reverse=True)
    assert all(p["s"] > 0 and p["count"] >= 1 for p in phases)


@pytest.mark.skipif(not cuda_plugin_installed(),
                    reason="compiling for a described GPU needs JAX's CUDA plugin (pip install 'vertex_jax[gpu]')")
def test_cli_compiles_for_a_described_gpu_without_one(tmp_path):
    """``--target=h200``: XLA:GPU compiles the step for the described card on this CPU-only
    machine, with the GPU forms of the ``auto`` settings; packing the state with flat Adam
    moments (the vector update) leaves it fewer kernels than the per-parameter state."""
    result, stdout = run_bench(tmp_path, "--what=compile", "--target=h200", "--noisolate",
                               "--sweep=augment.enabled=false", "--sweep=pack_state=false,true",
                               "--sweep=optim.flatten=false,true", devices=1)
    env, records = result["environment"], result["records"]
    assert env["platform"] == "cuda" and env["device"].startswith("h200")
    kernels = {(r["options"]["pack_state"], r["options"]["optim.flatten"]): r["kernels"] for r in records}
    assert all(r["target"] == "h200" and r["xla_s"] > 0 and r["xla_memory_bytes_per_device"] > 0
               for r in records)
    assert kernels[("true", "true")] < kernels[("false", "false")]
    assert "h200 (described" in stdout
    for r in records:  # where XLA's compile went, by its own trace
        assert any(p["name"] == "priority-fusion" for p in r["xla_phases"])
        assert [p["s"] for p in r["xla_phases"]] == sorted((p["s"] for p in r["xla_phases"]), reverse=True)
    assert "XLA's largest phases" in stdout


def test_cli_compile_point_is_cold_and_split_into_python_and_xla(tmp_path):
    """``--what=compile``: a record per point from a cold compile (the persistent cache is
    switched off for it, so nothing is written to it), lowering and XLA adding up to the
    whole, and the program's sizes."""
    cache = tmp_path / "cache"
    result, stdout = run_bench(tmp_path, "--what=compile", "--sweep=augment.enabled=false", "--noisolate",
                               devices=1, env={"VERTEX_COMPILE_CACHE": str(cache)})
    (r,) = result["records"]
    assert r["options"] == {"augment.enabled": "false"}
    assert r["what"] == "compile" and r["variant"] == "tiny" and r["batch"] == 8
    assert r["compile_s"] == pytest.approx(r["lower_s"] + r["xla_s"]) and r["xla_s"] > 0
    assert r["build_s"] > 0  # the model and optimizer built abstractly, before the step is traced
    assert r["stablehlo_ops"] > r["kernels"] > 100  # tiny B0-like: ~5,000 and ~1,500
    assert r["xla_memory_bytes_per_device"] > r["params"] * 4  # at least the float32 parameters
    assert not any(p.is_file() for p in cache.rglob("*"))
    assert "StableHLO ops" in stdout and "allocator" not in stdout


def test_cli_compile_eval_point_compiles_the_evaluation_step_at_its_batch(tmp_path):
    """``--what=compile-eval``: the evaluation step, at the swept evaluation batch; no
    optimizer, so a smaller program than the training step's."""
    result, _ = run_bench(tmp_path, "--what=compile-eval", "--batch=4", "--noisolate", devices=1,
                          env={"VERTEX_COMPILE_CACHE": "off"})
    (r,) = result["records"]
    assert r["what"] == "compile-eval" and r["batch"] == 4 and r["xla_s"] > 0
    assert 0 < r["kernels"] < 1000 and r["xla_memory_bytes_per_device"] > 0

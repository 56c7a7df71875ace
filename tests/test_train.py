"""Training through the real entry point: sharding, resume, preemption, NaN.

Each run is a subprocess of ``python -m vertex_jax.main`` on the tiny config; a shared
synthetic cohort and the session's compilation cache (conftest) keep the module fast.
Two processes against one: tests/test_launch.py (the Kubernetes pods' command); a lost
process: tests/test_faults.py.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vertex_jax.runs import model_arrays as runs_model_arrays
from vertex_jax.runs import read_json_item

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return {"data": root / "data"}


def run_main(shared, workdir, *overrides, devices=1, extra=(), wait=True, env=None):
    cmd = [sys.executable, "-m", "vertex_jax.main", "--config=configs/xray.py:tiny",
           f"--workdir={workdir}", f"--config.data.data_dir={shared['data']}", *overrides, *extra]
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
                **(env or {})}  # conftest's session-wide compilation cache included
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def steps(workdir) -> list[int]:
    ckpt = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.exists() else []


def model_arrays(workdir, step=None) -> dict[str, np.ndarray]:
    """Every array of the model (parameters, BatchNorm statistics) saved at ``step``."""
    step = steps(workdir)[-1] if step is None else step
    return runs_model_arrays(Path(workdir) / "checkpoints" / str(step))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def assert_equivalent(a, b, stats_atol=1e-5):
    """Same run up to float summation order.

    BatchNorm running statistics come straight from the global batch's activations and
    must agree tightly (per-device statistics or a different batch would not). Parameters
    after Adam steps agree to the step size: Adam normalises tiny gradients, so rounding
    noise in a near-zero gradient can flip an update of size ~lr. Statistics computed
    after such a flip move with it (``stats_atol``: ~lr times the layer's fan-in scale).
    """
    assert a.keys() == b.keys()
    for k in a:
        if k.endswith(("/mean/value", "/var/value")):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=stats_atol, err_msg=k)
        else:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-3, err_msg=k)


@pytest.fixture(scope="module")
def baseline(shared, tmp_path_factory):
    """An uninterrupted tiny run: 2 epochs of 3 steps, one device."""
    workdir = tmp_path_factory.mktemp("baseline")
    out = run_main(shared, workdir)
    return workdir, out


def test_run_trains_logs_and_summarises(baseline):
    workdir, out = baseline
    assert "epoch 1: validation AUROC pvf" in out and "done (completed)" in out
    for name in ("config.json", "metrics.jsonl", "summary.json", "splits.csv", "model_card.json", "model_card.md"):
        assert (workdir / name).exists(), name
    # The Markdown card, rewritten at the end: the synthetic cohort, the best validation AUROC, the calibration.
    page = (workdir / "model_card.md").read_text()
    data = json.loads((workdir / "model_card.json").read_text())["training_data"]
    assert data["synthetic"] and data["generator"]["built_in"]
    assert sum(s["images"] for s in data["splits"].values()) == len(pd.read_csv(workdir / "splits.csv"))
    assert "**Synthetic data only**" in page and "not for clinical use" in page
    assert "No evaluation report yet. Validation AUROC at step" in page and "Method `temperature`" in page
    assert list((workdir / "tensorboard").iterdir())
    assert steps(workdir)[-1] == 6
    # calibrated on the best checkpoint's validation outputs, stored in that step's card
    summary = json.loads((workdir / "summary.json").read_text())
    fitted = summary["calibration"]["fitted_on"]
    assert fitted == {"method": "temperature", "split": "val", "domain": "xray", "step": summary["best_step"]}
    card = read_json_item(workdir / "checkpoints" / str(summary["best_step"]), "card")
    assert card["calibration"] == summary["calibration"] and "calibration: pvf: temperature" in out
    # the loop's clock: every step but the first of each epoch (2 epochs of 3, batch 8)
    clock = summary["throughput"]
    assert clock["steps_timed"] == 4 and clock["seconds"] > 0
    assert clock["images_per_s"] * clock["seconds"] == pytest.approx(4 * 8)
    assert clock["user_s"] >= 0 and clock["system_s"] >= 0
    # the medians of the steps' intervals, and of the host's dispatch and batch wait of the
    # steps dispatched while the clock ran (the third of each epoch); the file leaves out
    # the per-step lists (tests/test_bench.py reads them in the loop bench's record)
    assert 0 < clock["step_s_median"] <= clock["seconds"]
    assert clock["dispatch_s_median"] > 0 and clock["wait_s_median"] >= 0
    assert not any(key.endswith("_each") for key in clock)


def test_interrupted_and_resumed_run_is_bit_identical(shared, baseline, tmp_path):
    reference, _ = baseline
    run_main(shared, tmp_path, "--config.max_steps=4")
    assert steps(tmp_path)[-1] == 4
    out = run_main(shared, tmp_path)
    assert "resumed from" in out and "at step 4" in out
    assert_same(model_arrays(reference, 6), model_arrays(tmp_path, 6))


def _wait_for(predicate, proc, timeout=300):
    start = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() - start < timeout, "timed out"
        time.sleep(0.2)


def test_sigterm_saves_and_resumes_then_kill9_and_a_corrupt_checkpoint_fall_back(shared, tmp_path):
    """SIGTERM: the run saves and says how to resume. The resumed run starts there and is
    killed with -9 once it has saved twice more; with its newest checkpoint corrupted, the
    next run sets that one aside and resumes from the one before."""
    proc = run_main(shared, tmp_path, "--config.num_epochs=50", "--config.log_every_steps=1",
                    wait=False)
    metrics = tmp_path / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "resume with the same command" in out
    saved = steps(tmp_path)[-1]
    assert saved >= 1
    # unbuffered: the killed process's output is all there
    proc = run_main(shared, tmp_path, "--config.num_epochs=50", wait=False, env={"PYTHONUNBUFFERED": "1"})
    _wait_for(lambda: len([s for s in steps(tmp_path) if s > saved]) >= 2, proc)
    proc.kill()
    out, _ = proc.communicate()
    assert f"at step {saved}" in out, out[-3000:]
    done = steps(tmp_path)
    # Orbax only renames a checkpoint into place when complete; every listed one restores.
    latest = done[-1]
    for f in (tmp_path / "checkpoints" / str(latest) / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "manifest" in f.name:
            f.write_bytes(b"garbage")
    out = run_main(shared, tmp_path, f"--config.max_steps={latest + 1}", "--config.num_epochs=50")
    assert "cannot be restored" in out
    assert f"at step {done[-2]}" in out and steps(tmp_path)[-1] == latest + 1
    assert [p.name.split("-")[0] for p in (tmp_path / "corrupt_checkpoints").iterdir()] == [str(latest)]


def test_nan_loss_stops_with_batch_rows_and_keeps_checkpoint(shared, baseline, tmp_path):
    """A copy of the finished baseline run, continued at a learning rate that overflows."""
    reference, _ = baseline
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    kept = steps(workdir)
    proc = run_main(shared, workdir, "--config.num_epochs=4", "--config.optim.lr=1e30", wait=False)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert f"at step {kept[-1]}" in out and "non-finite loss" in out and "batch rows" in out
    assert steps(workdir) == kept
    assert_same(model_arrays(reference), model_arrays(workdir))


def test_init_from_with_a_different_head(shared, baseline, tmp_path):
    reference, _ = baseline
    out = run_main(shared, tmp_path, f"--config.init_from={reference}", "--config.tasks=pvf,osteo",
                   "--config.max_steps=1", "--config.optim.lr=1e-12")
    assert "mismatched" in out and "output/kernel" in out
    # init_from of a workdir takes the run's best checkpoint, the one its summary names.
    best = json.loads((reference / "summary.json").read_text())["best_step"]
    src, dst = model_arrays(reference, best), model_arrays(tmp_path, 1)
    stem = next(k for k in src if "stem" in k and "kernel" in k)
    np.testing.assert_allclose(src[stem], dst[stem], atol=1e-6)


def test_a_run_with_flat_moments_resumes_without_them(shared, baseline, tmp_path):
    """``optim.flatten`` and ``pack_state`` (the accelerators' defaults: the loop steps the
    packed state and the optimizer updates the parameter vector) change only how the step
    holds the state: a run stopped with them resumes without them (as a GPU run continued on
    a CPU) and ends where the uninterrupted run ends, and its checkpoint holds the moments
    per parameter, the layout every run reads."""
    from vertex_jax.runs import restore_arrays

    reference, _ = baseline
    run_main(shared, tmp_path, "--config.max_steps=4", "--config.optim.flatten=true",
             "--config.pack_state=true")
    moments = restore_arrays(tmp_path / "checkpoints" / "4" / "state")["1"]["opt_state"]
    mu = moments["1"]["0"]["mu"]
    assert isinstance(mu, dict) and "backbone" in mu  # per parameter, not one vector
    out = run_main(shared, tmp_path)  # both auto: per parameter and unpacked on the CPU
    assert "resumed from" in out and "at step 4" in out
    # Four steps of flat Adam round differently from per-parameter Adam; the two steps after
    # the resume start from there (statistics to 1e-4 where updates are lr = 1e-3 in size).
    assert_equivalent(model_arrays(reference, 6), model_arrays(tmp_path, 6), stats_atol=1e-4)

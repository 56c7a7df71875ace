"""Shared fixtures: a small cohort of real image files written by the tests."""

import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")  # fake devices for sharding tests
# The entry points leave JAX's own cache settings alone (tests/test_compile_cache.py turns the
# product's cache on); instead one JAX compilation cache serves the whole session, both xdist
# workers and every subprocess: the many runs of the tiny config compile its programs once.
# The controller creates it (workers inherit the variable) and removes it at the end.
os.environ.setdefault("VERTEX_COMPILE_CACHE", "off")
_SESSION_CACHE_OWNER = "JAX_COMPILATION_CACHE_DIR" not in os.environ
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="vertex-tests-jit-"))
# Every program, however small: the tests call tiny models op by op (each operation compiles on
# its own, ~10 s for the tiny model's first call), and the same operations recur across tests,
# workers and subprocesses (the tiny model's first eager call: 10.1 s cold, 2.8 s from the cache).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests' programs are small and compiled once, so XLA:CPU compiles them for speed of
# compilation: LLVM's optimisation passes off (a cold tiny training run: 24 s -> 19 s) and its
# loop emitters instead of the MLIR fusion emitters (the tiny training step on two devices,
# 1,619 kernels: XLA's share 14.9 s -> 7.4 s). No test depends on either: tolerances come from
# the arithmetic, not from one compiler's summation order.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
    if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import cv2
import numpy as np
import pandas as pd
import pytest


def write_png_cohort(folder, n: int, seed: int = 0, shape=(180, 120)) -> pd.DataFrame:
    """n 16-bit PNGs with a few repeat patients and some missing values; returns the manifest."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        h, w = shape[0] + int(rng.integers(0, 40)), shape[1] + int(rng.integers(0, 30))
        yy = np.linspace(0, 1, h)[:, None]
        img = (yy * rng.uniform(0.3, 1.0) + rng.normal(0, 0.05, (h, w))).clip(0, 1) * 4095
        path = f"images/img{i:03d}.png"
        cv2.imwrite(str(folder / path), img.astype(np.uint16))
        rows.append({"image_id": f"img{i:03d}", "patient_id": f"P{i - (i % 7 == 1)}",
                     "path": path, "domain": "xray",
                     "pvf": "" if i == 3 else str(int(rng.random() < 0.3)),
                     "osteo": str(int(rng.random() < 0.4)),
                     "age": "" if i == 4 else f"{rng.uniform(50, 90):.1f}",
                     "sex": rng.choice(["F", "M"]), "bmi": f"{rng.uniform(18, 32):.1f}"})
    df = pd.DataFrame(rows)
    df.to_csv(folder / "manifest.csv", index=False)
    return df


def pytest_sessionfinish(session):
    if _SESSION_CACHE_OWNER and not hasattr(session.config, "workerinput"):  # the controller
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(params=[False, True], ids=["cpu-form", "accelerator-form"])
def accelerator_form(request):
    """Trace as on a CPU, or in the accelerator form of every ``auto`` setting (fused
    BatchNorm, its sums as one complex reduction, the evaluation forms) -- both run here."""
    from vertex_jax.auto_setting import assume_accelerator
    assume_accelerator(request.param)
    yield request.param
    assume_accelerator(None)


@pytest.fixture
def png_cohort(tmp_path):
    write_png_cohort(tmp_path, 23)
    return tmp_path / "manifest.csv"


@pytest.fixture
def cached_cohort(png_cohort, tmp_path):
    """(cache, manifest frame, clinical statistics) of ``png_cohort`` on a 32x16 canvas."""
    from vertex_jax.data.cache import build_cache
    from vertex_jax.data.clinical import ClinicalStats
    from vertex_jax.data.manifest import load_manifest
    from vertex_jax.data.preprocess import PreprocessConfig

    df = load_manifest(png_cohort)
    cache = build_cache(df, tmp_path / "cache", PreprocessConfig(canvas=(32, 16)), workers=1,
                        progress=False)
    return cache, df, ClinicalStats.fit(df)


@pytest.fixture(scope="session")
def vertebra_checkpoint(tmp_path_factory):
    """A tiny run with the vertebra head (``model.vertebrae``), written without training, its
    output layer set so that it finds vertebrae (``checkpoints.finding_vertebrae``): shared by
    the prediction, export and DICOM tests of the per-vertebra outputs. Its head has the demo's
    dilated convolution, so the export's parity covers it."""
    from checkpoints import finding_vertebrae, write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("vertebra_run"), vertebrae=True,
                            vertebra_dilations="1,2", prepare=finding_vertebrae)

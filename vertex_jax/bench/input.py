"""Input-side throughput: raw file → canvas, → cache, cache → training batch, augmentation.

``python -m vertex_jax.bench.input [--images 64] [--repeats 3] [--json out.json]``
(also ``python -m vertex_jax.bench --what=input``)

Writes its own uncompressed 16-bit DICOMs at radiograph size (2800×2000 by default),
then reports the median images/s of repeated runs for each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from vertex_jax.data.cache import build_cache
from vertex_jax.data.io import read_image
from vertex_jax.data.manifest import validate
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.pipeline import train_dataset
from vertex_jax.data.preprocess import PreprocessConfig, preprocess
from vertex_jax.synthetic.dicom_write import write_dicom


def _radiograph(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth 12-bit image with noise: realistic histogram work, cheap to make."""
    small = cv2.GaussianBlur(rng.random((shape[0] // 16, shape[1] // 16)).astype(np.float32), (0, 0), 3)
    big = cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)
    big = (big - big.min()) / (np.ptp(big) + 1e-6)
    return (big * 3500 + rng.normal(0, 40, shape) + 200).clip(0, 4095).astype(np.uint16)


def write_files(folder: Path, n: int, shape: tuple[int, int], compression: str = "none",
                distinct: int = 8) -> pd.DataFrame:
    """``n`` DICOM files (``distinct`` different images, copied) and their manifest."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    images = [_radiograph(rng, shape) for _ in range(min(n, distinct))]
    rows = []
    for i in range(n):
        path = folder / f"{compression}_{i:04d}.dcm"
        if i < len(images):
            write_dicom(path, images[i], bits_stored=12, compression=compression)
        else:
            path.write_bytes((folder / f"{compression}_{i % len(images):04d}.dcm").read_bytes())
        rows.append({"image_id": f"{compression}{i}", "patient_id": f"P{i}", "path": str(path),
                     "domain": "xray", "pvf": str(i % 2), "osteo": str(int(i % 3 == 0)),
                     "age": "70", "sex": "F", "bmi": "24"})
    return validate(pd.DataFrame(rows), folder)


def _median_rate(fn: Callable[[], int], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = fn()
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_raw(df: pd.DataFrame, config: PreprocessConfig, repeats: int) -> dict[str, float]:
    """Read + preprocess in this process (one core), and read alone."""
    paths = list(df["path"])
    read = _median_rate(lambda: sum(1 for p in paths if read_image(p).pixels.size), repeats)
    full = _median_rate(lambda: sum(1 for p in paths if preprocess(read_image(p).pixels, config)[0].size),
                        repeats)
    return {"read_only_per_core": read, "read_preprocess_per_core": full}


def bench_cache_build(df: pd.DataFrame, config: PreprocessConfig, folder: Path, workers: int,
                      repeats: int) -> float:
    def run() -> int:
        out = Path(tempfile.mkdtemp(dir=folder))
        build_cache(df, out, config, workers=workers, shard_size=max(1, len(df) // (2 * workers)),
                    progress=False)
        return len(df)
    return _median_rate(run, repeats)


def bench_batches(df: pd.DataFrame, config: PreprocessConfig, folder: Path, batch: int,
                  steps: int, workers: int, repeats: int) -> float:
    cache = build_cache(df, folder / "batch_cache", config, workers=os.cpu_count(), progress=False)
    ds = train_dataset(cache, df, tasks=("pvf", "osteo"), stats=ClinicalStats.fit(df),
                       global_batch=batch, seed=0, workers=workers)
    it = iter(ds)
    for _ in range(3):  # warm-up: workers started, page cache hot
        next(it)

    def run() -> int:
        for _ in range(steps):
            b = next(it)
        return steps * len(b["image"])
    rate = _median_rate(run, repeats)
    if hasattr(it, "close"):
        it.close()
    return rate


def bench_cpu_augment(config: PreprocessConfig, repeats: int, n: int = 64) -> float:
    """What augmenting on the CPU would cost per core: OpenCV warp + Gaussian noise."""
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 256, config.canvas).astype(np.uint8)
    center = ((config.canvas[1] - 1) / 2, (config.canvas[0] - 1) / 2)

    def run() -> int:
        for _ in range(n):
            m = cv2.getRotationMatrix2D(center, rng.uniform(-30, 30), rng.uniform(0.85, 1.15))
            x = cv2.warpAffine(canvas, m, config.canvas[::-1], flags=cv2.INTER_LINEAR).astype(np.float32)
            x += rng.standard_normal(x.shape, np.float32) * 0.03 * 255
            np.clip(x, 0, 255, out=x).astype(np.uint8)
        return n
    return _median_rate(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--height", type=int, default=2800)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = PreprocessConfig()
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        df = write_files(folder / "raw", args.images, (args.height, args.width))
        results.update(bench_raw(df, config, args.repeats))
        results["raw_to_cache_all_workers"] = bench_cache_build(df, config, folder, args.workers,
                                                                args.repeats)
        jls = write_files(folder / "jpegls", min(args.images, 16), (args.height, args.width), "jpegls")
        results["jpegls_read_preprocess_per_core"] = bench_raw(jls, config, args.repeats)[
            "read_preprocess_per_core"]
        for workers in sorted({0, args.workers}):
            results[f"cache_to_batch_workers{workers}"] = bench_batches(
                df, config, folder, args.batch, args.steps, workers, args.repeats)
    results["cpu_augment_per_core"] = bench_cpu_augment(config, args.repeats)
    print(f"input pipeline, {args.height}x{args.width} 16-bit DICOM -> {config.canvas[0]}x"
          f"{config.canvas[1]} uint8, {os.cpu_count()} cores ({platform.processor() or platform.machine()})")
    for name, rate in results.items():
        print(f"  {name:36s} {rate:9.1f} images/s")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "args": vars(args) | {"json": str(args.json)},
                                         "cpu_count": os.cpu_count(), "machine": platform.platform()},
                                        indent=2))


if __name__ == "__main__":
    main()

"""The loop benchmark's data: random canvases through the real cache and pipeline, the input
rate beside the loop's, a given data_dir still used; grain's read-ahead sized to the batch."""

import json
import os

import grain
import numpy as np
import pytest

from conftest import write_png_cohort
from vertex_jax.bench.canvas_cohort import noise_canvases, write_random_cohort
from vertex_jax.bench.feed import measure_input
from vertex_jax.bench.loop import loop_data
from vertex_jax.bench.measure import STEPS_PER_EPOCH
from vertex_jax.config_files import load_config
from vertex_jax.data.cache import COMPLETE
from vertex_jax.data.pipeline import read_options
from vertex_jax.data.prepare import prepare, synthetic_manifest_path

MiB = 2**20


@pytest.fixture
def tiny():
    return load_config("configs/xray.py:tiny")  # 64x32 canvas, batch 8, task pvf


def test_random_canvas_cache_reads_through_the_real_pipeline(tiny, tmp_path):
    cohort = write_random_cohort(tiny, tmp_path / "data", train=20, val=8)
    assert cohort.written == 28
    done = json.loads((cohort.cache.root / COMPLETE).read_text())
    assert done["num_records"] == 28 and done["num_failures"] == 0
    # prepare() finds the finished cache for the manifest (a rebuild would stop on the
    # placeholder file, which is no image) and splits it as written.
    tiny.data.manifest, tiny.data.data_dir = str(cohort.manifest), str(tmp_path / "data")
    data = prepare(tiny.data, tmp_path / "work", tasks=("pvf",))
    assert data.cache.root == cohort.cache.root
    assert (len(data.split("train")), len(data.split("val"))) == (20, 8)
    for split in ("train", "val"):  # both classes in each split
        assert set(data.split(split)["pvf"]) == {0.0, 1.0}
    iterator = iter(data.train(global_batch=8, seed=0))
    batch = next(iterator)
    iterator.close()
    assert batch["image"].shape == (8, 64, 32, 1) and batch["image"].dtype == np.uint8
    assert batch["labels"].shape == (8, 1) and batch["labels"].dtype == np.float32
    assert batch["clinical"].shape == (8, 3) and batch["clinical_mask"].min() == 1
    assert batch["index"].dtype == np.int64 and batch["valid"].all()
    # The batch holds the cached canvases of its rows, and they are distinct noise.
    rows = data.split("train")["image_id"][batch["index"]]
    source = grain.sources.ArrayRecordDataSource(data.cache.shard_paths)
    for image, record in zip(batch["image"][..., 0], data.cache.records_for(rows)):
        np.testing.assert_array_equal(image, data.cache.decode(source[int(record)]))
    assert len({image.tobytes() for image in batch["image"]}) == 8
    assert 100 < batch["image"].mean() < 155
    # Written once: the same call finds it.
    again = write_random_cohort(tiny, tmp_path / "data", train=20, val=8)
    assert again.written == 0 and again.cache.root == cohort.cache.root


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_noise_canvases_are_distinct_canvases_of_the_dtype(dtype):
    canvases = [c.copy() for c in noise_canvases(np.random.default_rng(0), 6, (16, 8), dtype)]
    assert all(c.shape == (16, 8) and c.dtype == dtype for c in canvases)
    assert len({c.tobytes() for c in canvases}) == 6
    assert max(c.max() for c in canvases) > np.iinfo(dtype).max // 2


def test_random_canvases_give_the_loop_the_isolated_steps_schedule(tiny, tmp_path):
    """The learning-rate schedule is a constant of the step's program: with the isolated
    step's epochs and epoch length the loop's step is that program, compiled once for both."""
    config, data = loop_data(tiny, 3, str(tmp_path / "scratch"))
    assert data["source"] == "random canvases" and config.max_steps == 3
    assert config.num_epochs == tiny.num_epochs == 2  # not raised to the 3 steps
    prepared = prepare(config.data, tmp_path / "work", tasks=("pvf",))
    assert len(prepared.split("train")) // config.batch_size == STEPS_PER_EPOCH


def test_a_given_data_dir_is_used_not_random_canvases(tiny, tmp_path):
    given = tmp_path / "given"
    tiny.data.data_dir = str(given)
    cohort = synthetic_manifest_path(tiny.data, given).parent  # found there: not generated
    write_png_cohort(cohort, 23)
    config, data = loop_data(tiny, 2, str(tmp_path / "scratch"))
    assert data == {"source": str(given)}
    assert config.data.data_dir == str(given) and config.data.manifest == ""
    assert config.max_steps == 2 and not (tmp_path / "scratch").exists()
    feed = measure_input(config, str(tmp_path / "work"), batches=2, repeats=2)
    assert feed["images_per_s"] > 0 and len(feed["images_per_s_runs"]) == 2
    (cache,) = (given / "cache").iterdir()  # the given cohort's cache, built where it lives
    assert (cache / COMPLETE).exists()
    assert not list(given.glob("random-*"))


def test_read_ahead_fits_whole_batches(monkeypatch):
    batch = 32 * 1024 * 512  # 32 canvases of 1024x512 uint8: 16 MiB
    o = read_options(batch, threads=4)
    assert (o.num_threads, o.prefetch_buffer_size) == (4, 8)  # two batches per thread
    o = read_options(batch, threads=8, buffer_mib=64)
    assert (o.num_threads, o.prefetch_buffer_size) == (4, 4)  # 64 MiB: 4 batches, 4 threads
    o = read_options(300 * MiB, threads=4)
    assert (o.num_threads, o.prefetch_buffer_size) == (1, 1)  # over the budget: one at a time
    o = read_options(8 * 64 * 32, threads=2)
    assert (o.num_threads, o.prefetch_buffer_size) == (2, 4)  # tiny batches: still two per thread
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert read_options(batch).num_threads == 8
    assert read_options(batch, workers=4).num_threads == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert (read_options(batch).num_threads, read_options(batch).prefetch_buffer_size) == (2, 4)
    with pytest.raises(ValueError, match="read threads"):
        read_options(batch, threads=-1)


def test_a_stall_every_logging_period_shows_at_its_position():
    from vertex_jax.bench.loop import periodic_stall

    steady = [0.010, 0.011, 0.012] * 10  # 30 steps, no period of 10 in them
    stalled = list(steady)
    for i in range(7, 30, 10):  # every 10th step, from the 8th, takes 9 ms more
        stalled[i] += 0.009
    quiet, stall = periodic_stall(steady, 10), periodic_stall(stalled, 10)
    assert quiet["period"] == stall["period"] == 10
    # each position sees 10, 11 and 12 ms once: none stands out
    assert quiet["slowest_position_s"] == pytest.approx(0.011) == quiet["median_s"]
    # the 8th position: 20, 21 and 19 ms; the median step stays 11 ms
    assert stall["slowest_position_s"] == pytest.approx(0.020)
    assert stall["median_s"] == pytest.approx(0.011)
    assert periodic_stall(steady[:19], 10) is None and periodic_stall(steady, 1) is None


def test_the_loop_printout_names_the_stall_of_each_logging_period():
    from vertex_jax.bench.loop import format_input_rates

    run = {"images_per_s": 300.0, "wait_s": 0.001, "dispatch_s": 0.09,
           "stall": {"period": 10, "slowest_position_s": 0.1, "median_s": 0.092}}
    entry = {"point": {}, "input": {"images_per_s": 3000.0}, "runs": [run, {**run, "stall": None}]}
    line = format_input_rates([entry])
    assert "10.0x the loop's 300" in line and "waited 1.00 ms for its batch and dispatched in 90.00 ms" in line
    assert line.endswith("every 10 steps (logging) the slowest step 100.00 ms against a median 92.00")
    assert "every" not in format_input_rates([{**entry, "runs": [{**run, "stall": None}]}])

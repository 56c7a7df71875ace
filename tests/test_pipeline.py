"""grain pipelines: batch content, per-epoch shuffle, process sharding, eval coverage, resume."""

import numpy as np
import pytest

from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.pipeline import eval_dataset, train_dataset

TASKS = ("pvf", "osteo")


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_batch_content_matches_manifest_and_cache(cached_cohort):
    cache, df, stats = cached_cohort
    batch = next(iter(eval_dataset(cache, df, tasks=TASKS, stats=stats, global_batch=8)))
    assert batch["image"].shape == (8, 32, 16, 1) and batch["image"].dtype == np.uint8
    assert batch["clinical"].shape == (8, 3) and batch["labels"].shape == (8, 2)
    import grain
    source = grain.sources.ArrayRecordDataSource(cache.shard_paths)
    for j, row in enumerate(batch["index"]):
        record = int(cache.records_for([df["image_id"][row]])[0])
        np.testing.assert_array_equal(batch["image"][j, ..., 0], cache.decode(source[record]))
    # Row 3 has no pVF label, row 4 no age: masked and zeroed.
    assert batch["label_mask"][3, 0] == 0 and batch["labels"][3, 0] == 0
    assert batch["clinical_mask"][4, 0] == 0 and batch["clinical"][4, 0] == 0
    # Clinical values normalised with the training statistics.
    age = (df["age"][0] - stats.mean[0]) / stats.std[0]
    assert batch["clinical"][0, 0] == pytest.approx(age, rel=1e-5)


def test_clinical_stats_ignore_missing_and_round_trip(cached_cohort):
    _, df, stats = cached_cohort
    assert stats.mean[0] == pytest.approx(np.nanmean(df["age"]))
    assert ClinicalStats.from_dict(stats.to_dict()) == stats
    with pytest.raises(ValueError, match="bmi"):
        ClinicalStats.fit(df.assign(bmi=np.nan))


def test_training_epochs_cover_every_example_and_reshuffle(cached_cohort):
    cache, df, stats = cached_cohort
    n, b = len(df), 4
    it = iter(train_dataset(cache, df, tasks=TASKS, stats=stats, global_batch=b, seed=1))
    stream = np.concatenate([x["index"] for x in _take(it, 3 * n // b)])
    epochs = np.concatenate([x["epoch"] for x in _take(
        iter(train_dataset(cache, df, tasks=TASKS, stats=stats, global_batch=b, seed=1)),
        3 * n // b)])
    first, second = stream[:n], stream[n:2 * n]
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert not np.array_equal(first, second)
    assert list(epochs[:n]) == [0] * n and list(epochs[n:2 * n]) == [1] * n
    other = iter(train_dataset(cache, df, tasks=TASKS, stats=stats, global_batch=b, seed=2))
    assert not np.array_equal(next(other)["index"], stream[:b])


def test_processes_split_the_global_batch_without_overlap(cached_cohort):
    cache, df, stats = cached_cohort
    kw = dict(tasks=TASKS, stats=stats, global_batch=6, seed=0)
    single = _take(iter(train_dataset(cache, df, **kw)), 5)
    parts = [_take(iter(train_dataset(cache, df, process_index=p, process_count=3, **kw)), 5)
             for p in range(3)]
    for k in range(5):
        local = [part[k]["index"] for part in parts]
        assert all(len(x) == 2 for x in local)
        # Process-ordered concatenation is the single-process global batch, in order.
        np.testing.assert_array_equal(np.concatenate(local), single[k]["index"])
    with pytest.raises(ValueError, match="does not divide over 4 processes"):
        train_dataset(cache, df, process_count=4, **kw)


def test_evaluation_sees_every_example_once_with_padding(cached_cohort):
    cache, df, stats = cached_cohort
    n = len(df)  # 23: not a multiple of the batch
    for count in (1, 2):
        seen, valid_flags = [], []
        for p in range(count):
            for batch in eval_dataset(cache, df, tasks=TASKS, stats=stats, global_batch=10,
                                      process_index=p, process_count=count):
                assert len(batch["index"]) == 10 // count
                seen.extend(batch["index"][batch["valid"]])
                valid_flags.extend(batch["valid"])
        assert sorted(seen) == list(range(n))
        assert len(valid_flags) == 30 and sum(valid_flags) == n


def test_iterator_state_restores_the_exact_stream(cached_cohort):
    cache, df, stats = cached_cohort
    kw = dict(tasks=TASKS, stats=stats, global_batch=4, seed=3)
    it = iter(train_dataset(cache, df, **kw))
    _take(it, 7)
    state = it.get_state()
    expected = _take(it, 6)
    resumed = iter(train_dataset(cache, df, **kw))
    resumed.set_state(state)
    for a, b in zip(expected, _take(resumed, 6)):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_worker_processes_give_the_same_stream(cached_cohort):
    cache, df, stats = cached_cohort
    kw = dict(tasks=TASKS, stats=stats, global_batch=4, seed=5)
    plain = _take(iter(train_dataset(cache, df, **kw)), 8)
    it = iter(train_dataset(cache, df, workers=2, **kw))
    try:
        parallel = _take(it, 8)
    finally:
        it.close()
    for a, b in zip(plain, parallel):
        np.testing.assert_array_equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["image"], b["image"])

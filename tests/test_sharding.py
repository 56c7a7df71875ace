"""Per-process data sharding: over P processes every record is read once, none is missed."""

import grain
import numpy as np
import pytest

from vertex_jax.data.pipeline import ProcessShard, eval_dataset, train_dataset

TASKS = ("pvf", "osteo")


@pytest.mark.parametrize("size", [30, 32])
@pytest.mark.parametrize("count", [1, 2, 3, 6])
def test_process_shards_partition_the_whole_batches(size, count):
    parts = [list(ProcessShard(grain.MapDataset.range(size), 6, p, count)) for p in range(count)]
    assert all(len(part) == size // 6 * 6 // count for part in parts)
    assert sorted(sum(parts, [])) == list(range(size // 6 * 6))  # a partial last batch is dropped


@pytest.mark.parametrize("count", [2, 3])
def test_training_epochs_over_processes_see_each_record_once(cached_cohort, count):
    cache, df, stats = cached_cohort
    n, batch = len(df), 6
    steps = -(-2 * n // batch)  # enough global batches for two whole epochs
    index, epoch = [], []
    for p in range(count):
        it = iter(train_dataset(cache, df, tasks=TASKS, stats=stats, global_batch=batch, seed=4,
                                process_index=p, process_count=count))
        for _ in range(steps):
            b = next(it)
            assert len(b["index"]) == batch // count
            index.append(b["index"])
            epoch.append(b["epoch"])
    index, epoch = np.concatenate(index), np.concatenate(epoch)
    for e in (0, 1):
        assert sorted(index[epoch == e]) == list(range(n))


def test_evaluation_over_three_processes_sees_each_record_once(cached_cohort):
    cache, df, stats = cached_cohort
    seen = []
    for p in range(3):
        for b in eval_dataset(cache, df, tasks=TASKS, stats=stats, global_batch=9, process_index=p,
                              process_count=3):
            assert len(b["index"]) == 3
            seen.extend(b["index"][b["valid"]])
    assert sorted(seen) == list(range(len(df)))

"""The training loop keeps the devices busy: it reads a step's results (its finite flag, the
metrics it logs) only once the next step is queued behind it. Reading the step just
dispatched would wait for it, and the devices would then idle while the host fetches,
transfers and dispatches the next batch (a stall every ``log_every_steps`` steps). With
the step called from a thread of its own (``dispatch_thread``) the run is the same."""

import itertools
import json
import threading
from pathlib import Path

import jax
import numpy as np

from vertex_jax.bench.loop import loop_data
from vertex_jax.config_files import load_config
from vertex_jax.runs import STATE, restore_arrays
from vertex_jax.train import loop as train_loop


class Watched:
    """One of a step's outputs: each read by the host is recorded as ("read", step)."""

    def __init__(self, value, step: int, events: list):
        self.value, self.step, self.events = value, step, events

    def _read(self):
        self.events.append(("read", self.step))
        return self.value

    def __float__(self) -> float:
        return float(self._read())

    def __bool__(self) -> bool:
        return bool(self._read())


def test_a_steps_results_are_read_only_after_the_next_step_is_dispatched_inline_or_threaded(tmp_path, monkeypatch):
    config = load_config("configs/xray.py:tiny")
    config.log_every_steps = 1  # every step's metrics are logged
    steps = 4
    config, _ = loop_data(config, steps, str(tmp_path / "data"))  # one epoch of random canvases
    events: list = []
    made: dict = {}  # the run's jitted steps, given again to the threaded run (no recompile)
    make_train_step, make_eval_step = train_loop.make_train_step, train_loop.make_eval_step

    def watched_step(*args, **kwargs):
        step_fn, count = made.setdefault("train", make_train_step(*args, **kwargs)), itertools.count(1)

        def call(state, batch):
            n = next(count)
            events.append(("dispatch", n))
            state, metrics = step_fn(state, batch)
            return state, {k: Watched(v, n, events) for k, v in metrics.items()}

        return call

    monkeypatch.setattr(train_loop, "make_train_step", watched_step)
    monkeypatch.setattr(train_loop, "make_eval_step",
                        lambda *a, **k: made.setdefault("eval", make_eval_step(*a, **k)))
    summary = train_loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["status"] == "completed" and summary["step"] == steps
    assert [e for e in events if e[0] == "dispatch"] == [("dispatch", n) for n in range(1, steps + 1)]
    for step in range(1, steps + 1):
        reads = [i for i, e in enumerate(events) if e == ("read", step)]
        assert reads, f"step {step}'s results were never read"
        if step < steps:  # the epoch's last step has no successor to wait behind
            assert min(reads) > events.index(("dispatch", step + 1)), (step, events)
    # and every step was logged, with its own loss
    logged = [json.loads(line) for line in Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "train/loss" in r] == list(range(1, steps + 1))

    # The same run with the step called from a thread of its own: the same numbers.
    threads = set()

    def threaded_step(state, batch):
        threads.add(threading.get_ident())
        return made["train"](state, batch)

    monkeypatch.setattr(train_loop, "make_train_step", lambda *a, **k: threaded_step)
    config.dispatch_thread = True
    threaded = train_loop.train_and_evaluate(config, str(tmp_path / "threaded"))
    assert threaded["status"] == "completed" and threaded["step"] == steps
    assert len(threads) == 1 and threading.get_ident() not in threads  # one thread, not this one
    # every saved array: model, optimizer moments and step, random keys
    inline_state = saved_state(summary["best_checkpoint"])
    threaded_state = saved_state(threaded["best_checkpoint"])
    assert inline_state.keys() == threaded_state.keys() and len(inline_state) > 100
    for name, array in inline_state.items():
        np.testing.assert_array_equal(threaded_state[name], array, err_msg=name)


def saved_state(step_dir: str) -> dict[str, np.ndarray]:
    """Every array a checkpoint's state holds, by its path."""
    tree = restore_arrays(Path(step_dir) / STATE)
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

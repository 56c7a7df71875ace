"""Checkpoint retention and the choice of the best step, on disk, across a reopen."""

import grain
import jax.numpy as jnp
from flax import nnx

from vertex_jax.runs import resolve_step_dir
from vertex_jax.train.checkpoint import Checkpoints


def _tiny_state():
    """A one-layer model's state and a grain iterator: what a checkpoint holds, small."""
    return nnx.state(nnx.Linear(2, 1, rngs=nnx.Rngs(0))), iter(grain.MapDataset.range(10).to_iter_dataset())


def _save(ckpt: Checkpoints, state, iterator, step: int, auroc: float) -> None:
    ckpt.save(step, state, iterator, {"step": step}, {"seed": 0}, {"tasks": ["pvf"]}, {"val_auroc": auroc})


def test_best_step_is_ranked_by_saved_metrics_after_a_reopen(tmp_path):
    state, iterator = _tiny_state()
    ckpt = Checkpoints(tmp_path / "checkpoints", keep_latest=1, keep_best=1)
    for step, auroc in ((1, 0.5), (2, 0.9), (3, 0.7), (4, 0.6)):
        state["kernel"].set_value(jnp.full((2, 1), float(step)))
        _save(ckpt, state, iterator, step, auroc)
    ckpt.wait()
    ckpt.close()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [2, 4]  # the latest and the best
    assert resolve_step_dir(tmp_path) == (tmp_path / "checkpoints" / "2").absolute()
    reopened = Checkpoints(tmp_path / "checkpoints", keep_latest=1, keep_best=1)
    assert reopened.best_step() == 2
    reopened.close()


def test_the_earliest_of_tied_best_steps_is_the_best(tmp_path):
    """One rule for training's progress and for reading a run back: among steps with the same
    best validation metric the earliest wins (training records the first improvement)."""
    from vertex_jax import runs

    state, iterator = _tiny_state()
    ckpt = Checkpoints(tmp_path / "checkpoints", keep_latest=1, keep_best=2)
    best = -1.0
    improved_at = []
    for step, auroc in ((1, 0.8), (2, 0.9), (3, 0.9), (4, 0.7)):
        if runs.improves(auroc, best):  # as the training loop decides
            best = auroc
            improved_at.append(step)
        _save(ckpt, state, iterator, step, auroc)
    ckpt.wait()
    assert improved_at[-1] == 2
    assert ckpt.best_step() == 2
    ckpt.close()
    assert resolve_step_dir(tmp_path) == (tmp_path / "checkpoints" / "2").absolute()
    assert runs.earliest_best([(3, 0.9), (1, float("nan")), (2, 0.9)]) == 2
    assert runs.earliest_best([(1, float("nan"))]) is None


def test_retention_keeps_the_earliest_of_tied_best_steps(tmp_path):
    """Orbax's BestN keeps the latest of a tie; the step training reports as best must survive."""
    state, iterator = _tiny_state()
    ckpt = Checkpoints(tmp_path / "checkpoints", keep_latest=1, keep_best=1)
    for step, auroc in ((1, 0.9), (2, 0.9), (3, 0.9), (4, 0.5)):
        _save(ckpt, state, iterator, step, auroc)
    ckpt.wait()
    assert ckpt.best_step() == 1
    ckpt.close()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [1, 4]

"""Checkpoint retention and the choice of the best step, on disk, across a reopen."""

import grain
import jax.numpy as jnp
from flax import nnx

from vertex_jax.train.checkpoint import Checkpoints, resolve_step_dir


def test_best_step_is_ranked_by_saved_metrics_after_a_reopen(tmp_path):
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    ckpt = Checkpoints(tmp_path / "checkpoints", keep_latest=1, keep_best=1)
    for step, auroc in ((1, 0.5), (2, 0.9), (3, 0.7), (4, 0.6)):
        state["kernel"].set_value(jnp.full((2, 1), float(step)))
        ckpt.save(step, state, iterator, {"step": step}, {"seed": 0}, {"tasks": ["pvf"]},
                  {"val_auroc": auroc})
    ckpt.wait()
    ckpt.close()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [2, 4]  # the latest and the best
    assert resolve_step_dir(tmp_path) == (tmp_path / "checkpoints" / "2").absolute()
    reopened = Checkpoints(tmp_path / "checkpoints", keep_latest=1, keep_best=1)
    assert reopened.best_step() == 2
    reopened.close()

"""The jitted steps: sharded over 4 fake CPU devices equals one device; loss masking; NaN."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from configs.xray import get_config
from vertex_jax.mesh import check_batch, to_global
from vertex_jax.models.build import build_model
from vertex_jax.train.state import TrainState
from vertex_jax.train.step import make_eval_step, make_train_step, masked_bce


def _batch(n=8, h=32, w=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, h, w, 1)).astype(np.uint8),
            "clinical": rng.normal(size=(n, 3)).astype(np.float32),
            "clinical_mask": (rng.random((n, 3)) > 0.2).astype(np.float32),
            "labels": (rng.random((n, 1)) > 0.5).astype(np.float32),
            "label_mask": np.ones((n, 1), np.float32),
            "index": np.arange(n, dtype=np.int64), "epoch": np.zeros(n, np.int64),
            "valid": np.ones(n, bool)}


def _state(config):
    return TrainState.create(build_model(config, seed=0), optax.sgd(0.05))


@pytest.fixture(scope="module")
def config():
    c = get_config("tiny")
    c.model.use_clinical = True
    return c


def test_four_devices_equal_one(config):
    """One step (augmentation, BatchNorm over the global batch, SGD) on 1 vs 4 devices."""
    assert len(jax.devices()) >= 4
    results = []
    for n in (1, 4):
        mesh = Mesh(np.asarray(jax.devices()[:n]), ("data",))
        ts = _state(config)
        before = jax.tree.map(np.asarray, nnx_params(ts, ts.state))
        step = make_train_step(ts.graphdef, config, mesh)
        state = jax.device_put(ts.state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        state, metrics = step(state, to_global(_batch(), mesh))
        results.append((before, jax.tree.map(np.asarray, nnx_params(ts, state)),
                        float(metrics["loss"]), float(metrics["grad_norm"])))
    (init, a, loss_a, norm_a), (_, b, loss_b, norm_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert norm_a == pytest.approx(norm_b, rel=1e-5)
    update = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(init)))
    diff = max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert update > 1e-3 and diff < 1e-3 * update  # same step up to summation order


def nnx_params(ts, state):
    from flax import nnx
    model, _ = nnx.merge(ts.graphdef, state)
    return nnx.state(model, nnx.Param)


def test_batch_must_divide_devices():
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
    check_batch(32, mesh)
    with pytest.raises(ValueError, match="batch 30 does not divide over 4 devices; use 28 or 32"):
        check_batch(30, mesh)


def test_masked_bce_matches_reference_and_ignores_unknown_labels():
    logits = jnp.array([[2.0, -1.0], [0.5, 3.0], [-2.0, 0.0]])
    labels = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    mask = jnp.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    ref = optax.sigmoid_binary_cross_entropy(logits, labels)
    expected = float(jnp.sum(ref * mask) / mask.sum())
    assert float(masked_bce(logits, labels, mask)) == pytest.approx(expected, rel=1e-6)
    weighted = masked_bce(logits, labels, mask, pos_weight=(2.0, 1.0))
    manual = -(2.0 * labels[:, :1] * jax.nn.log_sigmoid(logits[:, :1])
               + (1 - labels[:, :1]) * jax.nn.log_sigmoid(-logits[:, :1]))
    expected_w = (float(manual.sum()) + float((ref * mask)[:, 1].sum())) / float(mask.sum())
    assert float(weighted) == pytest.approx(expected_w, rel=1e-6)


def test_nonfinite_step_is_flagged_and_skipped_on_request(config):
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    batch = _batch()
    batch["clinical"][0, 0] = np.nan
    for policy in ("stop", "skip"):
        config.nan_policy = policy
        ts = _state(config)
        before = jax.tree.map(np.asarray, nnx_params(ts, ts.state))
        state, metrics = make_train_step(ts.graphdef, config, mesh)(ts.state, to_global(batch, mesh))
        assert not bool(metrics["finite"])
        after = jax.tree.map(np.asarray, nnx_params(ts, state))
        same = all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
        assert same == (policy == "skip")
    config.nan_policy = "stop"


def test_eval_step_outputs_probabilities_in_eval_mode(config):
    mesh = Mesh(np.asarray(jax.devices()[:2]), ("data",))
    ts = _state(config)
    out = make_eval_step(ts.graphdef, mesh)(ts.state, to_global(_batch(), mesh))
    again = make_eval_step(ts.graphdef, mesh)(ts.state, to_global(_batch(), mesh))
    probs = np.asarray(out["probs"])
    assert probs.shape == (8, 1) and (probs > 0).all() and (probs < 1).all()
    np.testing.assert_array_equal(probs, np.asarray(again["probs"]))  # no dropout at eval
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-np.asarray(out["logits"]))), rtol=1e-6)


def test_gradient_accumulation_updates_every_k_steps(config):
    """``optim.grad_accum=2``: the first micro-batch only accumulates; the second applies the
    configured optimizer once, to the mean of the two gradients (the update Adam + weight
    decay with ``grad_accum=1`` makes from that mean). ``build_optimizer`` is the only place
    the setting acts, so a small parameter tree checks it without compiling the network."""
    from vertex_jax.train.state import build_optimizer
    config = config.copy_and_resolve_references()
    config.optim.warmup_epochs = 0.0
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.ones(4, jnp.float32)}
    grads = [jax.tree.map(lambda p, k=k: jnp.asarray(np.random.default_rng(k).normal(size=p.shape), jnp.float32),
                          params) for k in (1, 2)]
    config.optim.grad_accum = 2
    accumulating = build_optimizer(config, steps_per_epoch=10)
    state = accumulating.init(params)
    first, state = accumulating.update(grads[0], state, params)
    second, _ = accumulating.update(grads[1], state, params)
    assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(first))  # accumulated only
    config.optim.grad_accum = 1
    plain = build_optimizer(config, steps_per_epoch=10)
    mean = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    expected, _ = plain.update(mean, plain.init(params), params)
    for got, want in zip(jax.tree.leaves(second), jax.tree.leaves(expected)):
        assert np.any(np.asarray(want))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-9)


def test_clinical_dropout_hides_whole_examples_deterministically():
    from vertex_jax.train.augment import example_keys, hide_clinical

    mask = jnp.ones((400, 3), jnp.float32).at[0, 1].set(0.0)
    keys = example_keys(0, jnp.zeros(400, jnp.int32), jnp.arange(400))
    np.testing.assert_array_equal(hide_clinical(mask, keys, 0.0), mask)
    np.testing.assert_array_equal(hide_clinical(mask, keys, 1.0), jnp.zeros_like(mask))
    half = np.asarray(hide_clinical(mask, keys, 0.5))
    hidden = (half == 0).all(axis=1)
    assert 0.4 < hidden.mean() < 0.6  # whole rows, about half of them
    assert np.array_equal(half[~hidden], np.asarray(mask)[~hidden])
    np.testing.assert_array_equal(half, hide_clinical(mask, keys, 0.5))

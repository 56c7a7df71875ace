"""The step called from a thread of its own gives what the inline calls give, in order."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vertex_jax.train.dispatch import StepDispatch


@jax.jit
def _step(state, batch):
    new = state * 0.5 + batch  # order matters: a swapped pair of steps gives other numbers
    return new, {"sum": jnp.sum(new)}


@pytest.mark.parametrize("threaded", [False, True])
def test_steps_run_in_order_on_the_state_the_previous_step_returned(threaded):
    batches = [np.full(3, float(i), np.float32) for i in range(1, 6)]
    state, sums = np.zeros(3, np.float32), []
    for b in batches:  # the same steps called by hand
        state, m = _step(state, b)
        sums.append(float(m["sum"]))
    threads = set()

    def step(state, batch):
        threads.add(threading.get_ident())
        return _step(state, batch)

    dispatch = StepDispatch(step, threaded=threaded)
    try:
        dispatch.start(jnp.zeros(3))
        futures = [dispatch.submit(b) for b in batches]
        order = dispatch.call(lambda: "after the steps")  # any other program, in the same order
        assert [float(f.result()["sum"]) for f in futures] == sums
        assert order.result() == "after the steps"
        np.testing.assert_array_equal(dispatch.state(), state)
        # the calls ran on one thread: the caller's inline, another one threaded
        assert len(threads) == 1 and (threading.get_ident() in threads) is not threaded
        dispatch.start(jnp.ones(3))  # the next epoch steps from the state it is given
        assert float(dispatch.submit(batches[0]).result()["sum"]) == pytest.approx(3 * 1.5)
    finally:
        dispatch.close()


def test_an_error_in_a_threaded_step_reaches_the_caller():
    def step(state, batch):
        raise ValueError(f"bad batch {batch}")

    dispatch = StepDispatch(step, threaded=True)
    try:
        dispatch.start(0)
        future = dispatch.submit(7)
        with pytest.raises(ValueError, match="bad batch 7"):
            future.result()
        with pytest.raises(ValueError, match="bad batch 7"):
            dispatch.state()
    finally:
        dispatch.close()

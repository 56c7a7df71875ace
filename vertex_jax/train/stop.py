"""Stopping for a signal (SIGTERM, SIGINT) at a step every process agrees on.

A signalled process finishes its current step, saves and exits. With several processes all
must stop at the same step (one stopping alone would leave the others waiting in a
collective), and a cluster may signal only some of them. So every ``every`` steps each
process's flag is gathered by a small program queued right behind the step just
dispatched, and its result is read one step later, once that next step is queued too:
reading it waits for the earlier step only, so the devices never run dry, and every process
reads the same value after the same step.
"""

from __future__ import annotations

import concurrent.futures
import logging
import signal
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vertex_jax import mesh as meshlib
from vertex_jax.train.dispatch import inline


class Preemption:
    """Turns SIGTERM/SIGINT into a flag checked between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        logging.warning("received %s: stopping after the current step (with several processes, the step "
                        "they agree on), then saving", signal.Signals(signum).name)
        self.requested = True

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class StopAgreement:
    """Whether the run stops after the step just dispatched (module docstring).

    One process: its own flag, at every step. Several (``gathered``, the default with more
    than one process): any process's flag as gathered after the last step that is a
    multiple of ``every``, read one step later; and at every epoch's end
    (:meth:`at_epoch_end`). ``launch(fn, *args) -> future`` runs the gather in the
    steps' order (:meth:`vertex_jax.train.dispatch.StepDispatch.call`; default: now).
    """

    def __init__(self, preemption: Preemption, mesh: Mesh, every: int, gathered: bool | None = None,
                 launch: Callable[..., concurrent.futures.Future] = inline):
        self.preemption, self.every, self.launch = preemption, max(1, int(every)), launch
        self.gathered = jax.process_count() > 1 if gathered is None else gathered
        self._sharding = meshlib.batch_sharded(mesh)
        self._any = meshlib.compiled_together(
            jax.jit(jnp.max, out_shardings=meshlib.replicated(mesh)), "stop agreement")
        self._pending: concurrent.futures.Future | None = None

    def after_dispatch(self, step: int) -> bool:
        """Step ``step`` (counted from 1) is dispatched: stop after it?"""
        if not self.gathered:
            return self.preemption.requested
        if self._read_pending():
            return True
        if step % self.every == 0:
            self._pending = self._gather()
        return False

    def at_epoch_end(self) -> bool:
        """Stop at this epoch's end? The loop waits for the devices here anyway: a gather
        still pending is read, then (unless it said stop) a new one at once, so a signal
        is heard at every epoch's end, whatever ``every`` is."""
        if not self.gathered:
            return self.preemption.requested
        return self._read_pending() or bool(self._gather().result())

    def _read_pending(self) -> bool:
        pending, self._pending = self._pending, None
        return pending is not None and bool(pending.result())

    def _gather(self) -> concurrent.futures.Future:
        local = np.full(len(self._sharding.addressable_devices), self.preemption.requested, np.int32)
        return self.launch(self._any, jax.make_array_from_process_local_data(self._sharding, local))

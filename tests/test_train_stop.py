"""Stopping for a signal: the flag, and the step every process agrees to stop after (the
two-process case, one process signalled: tests/test_launch.py)."""

import os
import signal

from vertex_jax import mesh as meshlib
from vertex_jax.train.stop import Preemption, StopAgreement


def test_sigterm_sets_the_flag_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    preemption = Preemption()
    try:
        assert not preemption.requested
        os.kill(os.getpid(), signal.SIGTERM)  # handled between bytecodes: the process lives on
        assert preemption.requested
    finally:
        preemption.restore()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_gathered_flag_is_read_one_step_after_the_step_it_was_gathered_behind():
    preemption = Preemption()
    try:
        mesh = meshlib.make_mesh()
        agree = StopAgreement(preemption, mesh, every=2, gathered=True)
        assert not agree.after_dispatch(1)  # not a multiple of 2: nothing gathered
        assert not agree.after_dispatch(2)  # gathered, unsignalled; read at the next step
        preemption.requested = True
        assert not agree.after_dispatch(3)  # reads step 2's gather: nobody had asked then
        assert not agree.after_dispatch(4)  # gathers the flag behind step 4 ...
        assert agree.after_dispatch(5)  # ... and every process reads it after step 5
        # an epoch ending right after a gather: read there
        assert not agree.after_dispatch(6) and agree.at_epoch_end()
        # an epoch ending between gathers (every=100 here): a gather made and read there
        preemption.requested = False
        rare = StopAgreement(preemption, mesh, every=100, gathered=True)
        assert not rare.after_dispatch(7) and not rare.at_epoch_end()
        preemption.requested = True
        assert not rare.after_dispatch(8) and rare.at_epoch_end()
        # one process, not gathered: its own flag, at once
        alone = StopAgreement(preemption, mesh, every=2, gathered=False)
        assert alone.after_dispatch(1) and alone.at_epoch_end()
    finally:
        preemption.restore()

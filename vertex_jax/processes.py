"""Worker processes that do not outlive their parent: ``kill -9`` of a run leaves none behind.

:func:`die_with_parent` is the ``initializer=`` of every process pool of the package. It
arms two independent mechanisms:

* Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker when its parent
  goes. Caveat: the signal fires when the parent *thread* that created the worker exits,
  not only the parent process, so a pool must be used from the thread that started its
  workers (true of every pool here; a pool created in a short-lived thread would lose its
  workers when that thread ends).
* A daemon watchdog thread, for other systems and for the race where the parent died
  before ``prctl`` ran: it waits on multiprocessing's parent sentinel (a pipe that reaches
  EOF when the process that created the worker dies; for a forkserver worker that is the
  run itself, not the server) or, without one, polls ``os.getppid()``.

The forkserver (its workers' real parent) is started by multiprocessing, not through a
pool, so it is armed by importing this module in the server: any module in its preload
list that imports this one (``vertex_jax.data.cache`` does) makes the server die with the
run too. The multiprocessing resource tracker needs nothing: it exits, after unlinking
leaked semaphores, once every process holding its pipe (the run and its workers) is gone.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_pdeathsig() -> bool:
    """Ask Linux to SIGKILL this process when its parent thread exits; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent_alive: Callable[[], bool], wait: Callable[[], None] | None, poll_s: float) -> None:
    if wait is not None:
        wait()  # returns when the parent sentinel reaches EOF
    else:
        while parent_alive():
            time.sleep(poll_s)
    _die()


def die_with_parent(poll_s: float = 0.5) -> None:
    """Make this (worker) process die as soon as the process that started it dies.

    Use as a pool's ``initializer=``; also safe to call in any child process.
    """
    _set_pdeathsig()
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        from multiprocessing.connection import wait as wait_ready

        alive: Callable[[], bool] = parent.is_alive
        wait: Callable[[], None] | None = lambda: wait_ready([parent.sentinel])  # noqa: E731
    else:
        ppid = os.getppid()
        alive, wait = (lambda: os.getppid() == ppid), None
    if not alive():
        _die()
    threading.Thread(target=_watch, args=(alive, wait, poll_s), name="die-with-parent",
                     daemon=True).start()


def _run_all(functions: tuple[Callable[[], None], ...]) -> None:
    for f in functions:
        f()


def worker_initializer(*more: Callable[[], None]) -> Callable[[], None]:
    """A picklable ``initializer=``: :func:`die_with_parent`, then each of ``more``."""
    return functools.partial(_run_all, (die_with_parent, *more))


def _is_forkserver() -> bool:
    return any("multiprocessing.forkserver import main" in a for a in getattr(sys, "orig_argv", ()))


if _is_forkserver():  # imported through the forkserver's preload list: arm the server itself
    die_with_parent()

"""The training step called inline or from a thread of its own (``config.dispatch_thread``).

On a GPU a step's call returns only once its last kernels fit in CUDA's launch queue, so
inline it holds the host for most of the step (docs/performance-notes.md §7, §20). The
host's other work per step (the next batch from grain and its transfer, the previous
step's flag, a log line) then has to fit in what is still queued when the call returns.
From a thread of its own the calls run beside that work. Either way the calls run one
after another in the order given, on the state the previous call returned: the same
results. Every program the loop runs on the devices while steps are in flight goes through
:meth:`StepDispatch.call`, so with several processes each device sees its programs (and
their collectives) in the same order.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable


def inline(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` called now; its result as a finished future."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(fn(*args))
    return future


class StepDispatch:
    """Calls ``step(state, batch) -> (state, metrics)`` in order, keeping the state.

    :meth:`submit` returns the step's metrics as a future; :meth:`state` the state after
    every step submitted so far (waiting for their calls, not for the devices)."""

    def __init__(self, step: Callable[[Any, Any], tuple[Any, Any]], threaded: bool):
        self.step = step
        self._pool = (concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vertex-dispatch")
                      if threaded else None)
        self._state: Any = None
        self._last: concurrent.futures.Future | None = None

    def start(self, state: Any) -> None:
        """Step from ``state`` on (after :meth:`state`, or before the first step)."""
        self._state, self._last = state, None

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """``fn(*args)`` after every call before it; its result as a future."""
        self._last = inline(fn, *args) if self._pool is None else self._pool.submit(fn, *args)
        return self._last

    def submit(self, batch: Any) -> concurrent.futures.Future:
        """The next step on ``batch``; the future of its metrics."""
        return self.call(self._step, batch)

    def _step(self, batch: Any) -> Any:
        self._state, metrics = self.step(self._state, batch)
        return metrics

    def state(self) -> Any:
        """The state after every step submitted (their calls returned)."""
        if self._last is not None:
            self._last.result()
        return self._state

    def close(self) -> None:
        """Stop the thread; calls not started are dropped (after an error or a stop)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

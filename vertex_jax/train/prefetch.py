"""Training batches put on the devices ahead of the step that uses them.

While step ``k`` runs, batch ``k + 1`` is already sharded and transferred (``depth`` 2),
so the host never waits for the device to fetch, shard and copy. Batches are fetched ahead
only within the current epoch, so at an epoch's checkpoint nothing is held back; when a run
stops mid-epoch to save (preemption), :meth:`DevicePrefetch.rewind` puts the host
iterator back right after the last batch used, so the saved iterator resumes exactly there.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Iterator

from vertex_jax.errors import ConfigError


class DevicePrefetch:
    """``next(remaining)`` -> (host batch, device batch), keeping up to ``depth`` on the devices."""

    def __init__(self, iterator: Iterator[dict], put: Callable[[dict], Any], depth: int = 2):
        if depth < 1:
            raise ConfigError(f"prefetch depth must be >= 1, got {depth}")
        self.iterator, self.put, self.depth = iterator, put, depth
        self._queue: collections.deque = collections.deque()  # (host, device, iterator state after it)
        self._resume_state: Any = None

    def next(self, remaining: int) -> tuple[dict, Any]:
        """The next batch; ``remaining`` (>= 1) is how many the epoch still uses, the most
        that may be fetched ahead."""
        while len(self._queue) < min(self.depth, remaining):
            host = next(self.iterator)
            self._queue.append((host, self.put(host), self.iterator.get_state()))
        host, device, self._resume_state = self._queue.popleft()
        return host, device

    def rewind(self) -> None:
        """Forget the batches fetched ahead; the iterator continues after the last one used."""
        if self._queue:
            self.iterator.set_state(self._resume_state)
            self._queue.clear()

"""Validation metrics and where training metrics go (metrics.jsonl + TensorBoard)."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vertex_jax.evaluate.roc import auroc


def auroc_per_task(labels: np.ndarray, probs: np.ndarray, mask: np.ndarray,
                   tasks: Sequence[str]) -> dict[str, float]:
    """AUROC per task over examples with a known label (NaN when one class is absent)."""
    out = {}
    for t, name in enumerate(tasks):
        known = mask[:, t] > 0
        out[name] = auroc(labels[known, t], probs[known, t])
    return out


class MetricWriter:
    """Appends ``{"step": s, ...}`` lines to ``metrics.jsonl`` and TensorBoard scalars."""

    def __init__(self, workdir: str | Path, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            from tensorboardX import SummaryWriter

            self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")
            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


class CpuClock:
    """User and system CPU seconds of this process (all its threads) since the last
    :meth:`lap`: on a CPU backend, system time is threads waiting on each other."""

    def __init__(self) -> None:
        self._last = os.times()

    def lap(self) -> tuple[float, float]:
        now, last = os.times(), self._last
        self._last = now
        return now.user - last.user, now.system - last.system


class Throughput:
    """Images per second of the training steps on the host's clock, as a run sees them.

    :meth:`tick` is called each time a step is known to have finished (its result read), so
    the interval between ticks is one step on the devices with the host's work around it;
    :meth:`pause` before a stretch that is not training (validation, checkpoints). The
    first tick after a pause only starts the clock: the first step of every epoch (the
    first of a process compiles) is left out. User and system CPU seconds of the process
    (all threads) are summed over the same intervals.

    Beside the totals, each timed step's interval (``step_s_each``), and the host's time
    to dispatch a step (:meth:`dispatched`: the call returning, not the step) and to wait
    for its batch (:meth:`waited`: the input pipeline behind the steps), for the steps
    while the clock runs; the first :data:`KEPT_STEPS` of each, so a long run's summary
    stays small.
    """

    KEPT_STEPS = 1000

    def __init__(self) -> None:
        self.seconds, self.images, self.steps = 0.0, 0, 0
        self.user_s, self.system_s = 0.0, 0.0
        self.step_s: list[float] = []
        self.dispatch_s: list[float] = []
        self.wait_s: list[float] = []
        self._last: float | None = None
        self._cpu = CpuClock()

    def pause(self) -> None:
        self._last = None

    def tick(self, images: int) -> None:
        now, (user, system) = time.perf_counter(), self._cpu.lap()
        if self._last is not None:
            self.seconds += now - self._last
            self.user_s += user
            self.system_s += system
            self.images += images
            self.steps += 1
            self._keep(self.step_s, now - self._last)
        self._last = now

    def dispatched(self, seconds: float) -> None:
        """A step's dispatch took ``seconds`` of the host (kept while the clock runs)."""
        if self._last is not None:
            self._keep(self.dispatch_s, seconds)

    def waited(self, seconds: float) -> None:
        """The host waited ``seconds`` for a step's batch (kept while the clock runs)."""
        if self._last is not None:
            self._keep(self.wait_s, seconds)

    def _keep(self, values: list[float], seconds: float) -> None:
        if len(values) < self.KEPT_STEPS:
            values.append(seconds)

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 else None

    def to_dict(self, each: bool = True) -> dict[str, Any]:
        """The totals, the medians of the kept per-step times (None where none was kept)
        and, with ``each``, the kept per-step times themselves."""
        out = {"steps_timed": self.steps, "seconds": self.seconds, "images_per_s": self.images_per_s,
               "user_s": self.user_s, "system_s": self.system_s}
        kept = {"step_s": self.step_s, "dispatch_s": self.dispatch_s, "wait_s": self.wait_s}
        out.update({f"{name}_median": statistics.median(v) if v else None for name, v in kept.items()})
        if each:
            out.update({f"{name}_each": v for name, v in kept.items()})
        return out

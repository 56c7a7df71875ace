"""Tracing in linear time: a cheap ``sharding`` probe on JAX tracers.

Flax NNX asks every value it assigns to a Variable for its sharding
(``getattr(value, 'sharding', None)`` in ``Variable.set_value``): each random-number draw
while a model is built, each optimizer update and each BatchNorm statistic in a step. On a
tracer JAX answers with an ``AttributeError`` whose message first walks every equation
traced so far to say where the tracer came from; the message is thrown away by
``getattr``, but the walk makes tracing quadratic in the program's size (EfficientNet-B4
+ fusion, bfloat16, batch 32, compiled for a described H200 on this project's 2-core CPU):
the model and optimizer built abstractly in 1.4 s instead of 4.0, the training step traced
and lowered in 3.5-4.4 s instead of 8.7-9.8 (docs/performance-notes.md §17).

:func:`install` replaces the property with one that raises the same ``AttributeError``
without the walk, so ``hasattr`` and ``getattr`` answer as before. It is applied when
:mod:`vertex_jax.models` is imported (every program of this project traces a model);
``VERTEX_TRACER_PROBE=jax`` keeps JAX's own (to compare, or should the two ever differ). JAX
0.10 and 0.11 and JAX's main branch (August 2026) still walk the trace here; an upstream
pull request to drop the walk (jax-ml/jax#40041) was closed unmerged. Remove this module
when JAX's ``Tracer.sharding`` stops calling ``_origin_msg``.
"""

from __future__ import annotations

import os
import warnings

from jax._src import core

__all__ = ["install", "active", "JAX_SHARDING"]

# JAX's own property, before install(); None should a JAX release stop defining it on Tracer
# (then nothing is replaced: a JAX this module does not know is left as it is).
JAX_SHARDING = core.Tracer.__dict__.get("sharding")


def _sharding(self: core.Tracer):
    raise AttributeError(f"The 'sharding' attribute is not available on {self._error_repr()}.")


def install() -> None:
    """Make ``Tracer.sharding`` raise without walking the trace (idempotent), unless the
    environment says ``VERTEX_TRACER_PROBE=jax``."""
    choice = os.environ.get("VERTEX_TRACER_PROBE", "cheap")
    if choice not in ("cheap", "jax"):
        warnings.warn(f"VERTEX_TRACER_PROBE={choice!r} is neither 'cheap' nor 'jax': using 'cheap'", stacklevel=2)
    if choice != "jax" and JAX_SHARDING is not None:
        core.Tracer.sharding = property(_sharding)


def active() -> str:
    """``"jax"`` while JAX's own probe is in place, ``"cheap"`` once :func:`install` ran."""
    return "jax" if core.Tracer.__dict__.get("sharding") is JAX_SHARDING else "cheap"

"""Analytic FLOPs of a traced program: its convolutions and matrix products, from shapes.

XLA's cost analysis reports what the *compiled* program does on one backend, which can
differ from the model's arithmetic: XLA:CPU, for one, rewrites the batch-grouped
convolution that computes a depthwise kernel's gradient into a dense convolution with
``C`` times the work (``benchmarks/depthwise_cost.py``). This count walks the jaxpr
instead, so it is the same on every backend:

- ``conv_general_dilated``: 2 × output elements × kernel taps per output, where the taps
  are the kernel's spatial size times its input features (already divided by
  ``feature_group_count``; correct for ``batch_group_count`` too), divided by the input
  dilation (the zeros a transposed convolution inserts are not arithmetic). Taps that fall
  on padding count, the convention of published MAC figures.
- ``dot_general``: 2 × batch × free × free × contracted.

Everything else (elementwise, reductions, gathers) is left out. Nested programs (jit,
remat, custom derivatives) are walked; ``scan`` bodies count ``length`` times, ``cond``
its costliest branch. A rematerialised forward pass therefore counts again: the figure
is the arithmetic the step performs, not the model's minimum.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
from jax.extend.core import ClosedJaxpr, Jaxpr, jaxprs_in_params

__all__ = ["Flops", "conv_flops", "jaxpr_flops", "count_flops"]


@dataclasses.dataclass(frozen=True)
class Flops:
    """Floating-point operations (a multiply-add is 2) by kind."""

    conv: int = 0
    dot: int = 0

    @property
    def total(self) -> int:
        return self.conv + self.dot

    def __add__(self, other: "Flops") -> "Flops":
        return Flops(self.conv + other.conv, self.dot + other.dot)

    def __mul__(self, k: int) -> "Flops":
        return Flops(self.conv * k, self.dot * k)


def conv_flops(eqn: Any) -> int:
    """FLOPs of one ``conv_general_dilated`` equation (see the module docstring)."""
    rhs = eqn.invars[1].aval
    out = eqn.outvars[0].aval
    _, in_features, *spatial = eqn.params["dimension_numbers"].rhs_spec
    taps = rhs.shape[in_features] * math.prod(rhs.shape[d] for d in spatial)
    return 2 * math.prod(out.shape) * taps // math.prod(eqn.params["lhs_dilation"])


def _dot_flops(eqn: Any) -> int:
    lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = math.prod(n for d, n in enumerate(rhs.shape) if d not in (*rhs_contract, *rhs_batch))
    return 2 * math.prod(lhs.shape) * rhs_free


def jaxpr_flops(jaxpr: Jaxpr | ClosedJaxpr, conv_cost: Callable[[Any], int] = conv_flops) -> Flops:
    """Convolution and matrix-product FLOPs of ``jaxpr`` and everything nested in it;
    ``conv_cost(eqn)`` counts one convolution (to model a backend's own rewrites)."""
    if isinstance(jaxpr, ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = Flops()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += Flops(conv=conv_cost(eqn))
        elif name == "dot_general":
            total += Flops(dot=_dot_flops(eqn))
        elif name == "cond":
            total += max((jaxpr_flops(b, conv_cost) for b in eqn.params["branches"]),
                         key=lambda f: f.total)
        else:
            inner = sum((jaxpr_flops(j, conv_cost) for j in jaxprs_in_params(eqn.params)), Flops())
            total += inner * eqn.params["length"] if name == "scan" else inner
    return total


def count_flops(fn: Callable[..., Any], *args: Any) -> Flops:
    """FLOPs of ``fn(*args)``, traced (not compiled); arguments may be abstract
    (``jax.ShapeDtypeStruct``). A ``jax.jit``-wrapped ``fn`` keeps its own shardings."""
    traced = fn.trace(*args) if hasattr(fn, "trace") else jax.jit(fn).trace(*args)
    return jaxpr_flops(traced.jaxpr)

"""Size and cost of an EfficientNet at a given input size, without initialising it.

- parameters per stage (exact, from the abstract model);
- multiply-accumulates: an analytic count (every conv / linear tap, padding included, the
  convention behind the published "4.39 GMACs at 380^2" for B4) and XLA's cost analysis of
  the jitted forward (flops / 2; it skips padded taps but adds elementwise work);
- activation memory per training image: the residuals JAX's autodiff keeps for the backward
  pass (`jax.vjp`), difference between batch 2 and batch 1, in the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vertex_jax.models.efficientnet import EfficientNet, set_fold_bn, set_se_forms

__all__ = [
    "StageRow", "stage_rows", "analytic_macs", "xla_macs", "activation_bytes_per_image", "format_summary",
]


@dataclasses.dataclass(frozen=True)
class StageRow:
    name: str
    blocks: int
    channels: int
    height: int
    width: int
    params: int
    macs: int


def _params(module: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _module_params(*modules) -> int:
    return sum(_params(m) for m in modules if m is not None)


def _conv_macs(conv: nnx.Conv, h: int, w: int) -> int:
    return h * w * int(np.prod(conv.kernel.shape))  # kernel [kh, kw, cin / groups, cout]


def _linear_macs(linear: nnx.Linear) -> int:
    return int(np.prod(linear.kernel.shape))


def stage_rows(model: EfficientNet, height: int, width: int) -> list[StageRow]:
    """Stem, the seven MBConv stages, head and classifier with output size, params and MACs."""
    h, w = math.ceil(height / 2), math.ceil(width / 2)
    rows = [StageRow("stem", 0, model.stem_conv.out_features, h, w,
                     _module_params(model.stem_conv, model.stem_bn), _conv_macs(model.stem_conv, h, w))]
    for s, stage in enumerate(model.stages):
        macs = 0
        for block in stage:
            if block.expand_conv is not None:
                macs += _conv_macs(block.expand_conv, h, w)
            h, w = math.ceil(h / block.spec.stride), math.ceil(w / block.spec.stride)
            macs += _conv_macs(block.dw_conv, h, w) + _conv_macs(block.project_conv, h, w)
            macs += _linear_macs(block.se_reduce) + _linear_macs(block.se_expand)
        rows.append(StageRow(f"stage{s + 1}", len(stage), stage[-1].spec.out_channels, h, w,
                             _params(stage), macs))
    rows.append(StageRow("head", 0, model.num_features, h, w,
                         _module_params(model.head_conv, model.head_bn), _conv_macs(model.head_conv, h, w)))
    if model.classifier is not None:
        rows.append(StageRow("classifier", 0, model.num_classes, 1, 1, _params(model.classifier),
                             _linear_macs(model.classifier)))
    return rows


def analytic_macs(model: EfficientNet, height: int, width: int) -> int:
    """Multiply-accumulates of one forward pass for one image (analytic count)."""
    return sum(r.macs for r in stage_rows(model, height, width))


def _abstract_image(model: EfficientNet, batch: int, height: int, width: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, height, width, model.in_channels), jnp.float32)


def xla_macs(model: EfficientNet, height: int, width: int) -> float:
    """XLA cost analysis of the jitted eval-mode forward for one image: flops / 2.

    Only lowered, not compiled, so it works on an abstract (`nnx.eval_shape`) model. The
    squeeze-excite pool is read from the activation and the BatchNorms normalise apart, so a
    GPU host (where ``se_pool=auto`` recomputes the pool and ``fold_bn=auto`` folds in
    evaluation) counts the network's own work, as a CPU does.
    """
    graphdef, state = nnx.split(nnx.view(model, deterministic=True, use_running_average=True))

    def forward(state, x):
        net = nnx.merge(graphdef, state)
        set_se_forms(net, pool="shared")
        set_fold_bn(net, "separate")
        return net(x)
    cost = jax.jit(forward).lower(state, _abstract_image(model, 1, height, width)).cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"]) / 2.0


def activation_bytes_per_image(model: EfficientNet, height: int, width: int) -> int:
    """Bytes of residuals autodiff keeps for the backward pass, per training image.

    Counted on the traced program (before XLA fusion), train mode, gradients w.r.t. the
    parameters. With `remat=True` this is what stays alive between blocks; the block being
    recomputed in the backward pass needs its own residuals on top. Works on an abstract model.
    """
    graphdef, params, rest = nnx.split(nnx.view(model, deterministic=False, use_running_average=False),
                                       nnx.Param, ...)

    def residual_bytes(batch: int) -> int:
        def pullback(params, rest, x):
            def loss(p):
                return jnp.sum(nnx.merge(graphdef, p, rest, copy=True)(x))
            return jax.vjp(loss, params)[1]
        out = jax.eval_shape(pullback, params, rest, _abstract_image(model, batch, height, width))
        return sum(int(np.prod(leaf.shape)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(out)
                   if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))
    return residual_bytes(2) - residual_bytes(1)


def _stage_range(stages: int) -> str:
    return "stage 0" if stages == 1 else f"stages 0-{stages - 1}"


def format_summary(model: EfficientNet, height: int, width: int, *, xla: bool = True,
                   memory: bool = True) -> str:
    """A printable table: parameters and GMACs per stage, totals, XLA GMACs, activation memory."""
    rows = stage_rows(model, height, width)
    dtype = jnp.dtype(model.dtype).name
    lines = [f"EfficientNet-{model.variant}: input {height}x{width}x{model.in_channels}, "
             f"classes {model.num_classes}, compute {dtype}, remat {model.remat}, "
             f"recompute {model.recompute}"
             + (f" ({_stage_range(model.recompute_stages)})" if model.recompute != "none" else ""),
             f"{'part':<11}{'blocks':>7}{'channels':>10}{'output':>11}{'params':>13}{'GMACs':>9}"]
    for r in rows:
        lines.append(f"{r.name:<11}{r.blocks or '':>7}{r.channels:>10}{f'{r.height}x{r.width}':>11}"
                     f"{r.params:>13,}{r.macs / 1e9:>9.3f}")
    total_params, total_macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    lines.append(f"{'total':<39}{total_params:>13,}{total_macs / 1e9:>9.3f}")
    lines.append(f"GMACs (analytic, all conv/linear taps): {total_macs / 1e9:.2f}")
    if xla:
        lines.append(f"GMACs (XLA cost analysis, flops/2):     {xla_macs(model, height, width) / 1e9:.2f}")
    if memory:
        act = activation_bytes_per_image(model, height, width)
        note = "; plus one block's working set while it is recomputed" \
            if model.remat or model.recompute != "none" else ""
        lines.append(f"activation memory per training image:   {act / 2**30:.3f} GiB ({dtype} compute, "
                     f"autodiff residuals before XLA fusion{note})")
    return "\n".join(lines)

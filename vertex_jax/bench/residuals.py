"""What the training step keeps for its backward pass, per image and by kind.

    python -m vertex_jax.bench.residuals [--config configs/xray.py] \
        [--recompute none,elementwise,elementwise:3] [--batchnorm fused] [--dtype bfloat16] [--json out.json]

JAX's ``saved_residuals`` of the model's loss with respect to its parameters, traced
(nothing is compiled or run), so it is the same on every backend: the activation memory
of a training step before a backend schedules it. Depthwise layers are grouped
convolutions, as on GPUs. Each residual is put in a kind by where the model makes it, and
in a feature-map size (what ``model.recompute_stages`` chooses among: the first stages
have the largest maps).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from vertex_jax.bench.plain_config import point_config

__all__ = ["KINDS", "saved_residuals_of", "saved_activation_bytes", "by_kind", "by_size", "main"]

# (kind, a pattern of its source description); the first match wins.
KINDS = (
    ("convolution outputs (BatchNorm inputs)", r"named 'conv'|conv_general_dilated"),
    ("BatchNorm + swish outputs (next convolution's input)", r"_normalize_act|\(BatchNorm\."),
    ("gated inputs of the projection", r"output of mul .*\(MBConv\.__call__\)"),
    ("block outputs (skip additions)", r"output of add .*\(MBConv\.__call__\)"),
)
_OTHER = "other (drop-connect masks, stem, heads)"


def saved_residuals_of(config: Any, batch: int) -> list[tuple[Any, str]]:
    """``(aval, source)`` of every residual the forward pass keeps for the backward pass
    of the loss w.r.t. the parameters (the parameters themselves left out)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax._src.ad_checkpoint import saved_residuals  # no public equivalent that returns
    from vertex_jax.models.build import build_model

    model = nnx.eval_shape(lambda: build_model(config, seed=0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    h, w = config.data.canvas

    def loss(params: Any, rest: Any, images: jax.Array, clinical: jax.Array, mask: jax.Array
             ) -> jax.Array:
        net = nnx.merge(graphdef, params, rest)
        net.train()
        return net(images, clinical * mask, mask).astype(jnp.float32).sum()
    args = (params, rest, jax.ShapeDtypeStruct((batch, h, w, 1), jnp.float32),
            jax.ShapeDtypeStruct((batch, 3), jnp.float32), jax.ShapeDtypeStruct((batch, 3), jnp.float32))
    return [(aval, source) for aval, source in saved_residuals(loss, *args)
            if not source.startswith("from the argument")]


def saved_activation_bytes(config: Any, batch: int) -> int:
    """Bytes of :func:`saved_residuals_of`: what ``model.remat`` and ``model.recompute``
    change, whatever a backend does with it."""
    return sum(aval.size * aval.dtype.itemsize for aval, _ in saved_residuals_of(config, batch))


def _kind(source: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, source)), _OTHER)


Residuals = list[tuple[Any, str]]  # what saved_residuals_of returns


def by_kind(residuals: Residuals, batch: int = 1) -> dict[str, float]:
    """Bytes per image of each kind (:data:`KINDS` and the rest), and ``"total"``, of
    :func:`saved_residuals_of` at ``batch``."""
    out: collections.Counter[str] = collections.Counter()
    for aval, source in residuals:
        out[_kind(source)] += aval.size * aval.dtype.itemsize / batch
    return {**{k: out.get(k, 0.0) for k, _ in KINDS}, _OTHER: out.get(_OTHER, 0.0),
            "total": sum(out.values())}


def by_size(residuals: Residuals, batch: int = 1) -> dict[str, float]:
    """Bytes per image by feature-map size (``"512x256"``, largest first; residuals that are
    not [B, H, W, C] maps with H and W above 1 under ``"other"``), and ``"total"``, of
    :func:`saved_residuals_of` at ``batch``."""
    out: collections.Counter[tuple[int, int]] = collections.Counter()
    for aval, _ in residuals:
        size = tuple(aval.shape[1:3]) if aval.ndim == 4 and min(aval.shape[1:3]) > 1 else (0, 0)
        out[size] += aval.size * aval.dtype.itemsize / batch
    table = {f"{h}x{w}": out[h, w] for h, w in sorted(out, reverse=True) if h}
    return {**table, "other": out.get((0, 0), 0.0), "total": sum(out.values())}


def _print_table(title: str, tables: dict[str, dict[str, float]], width: int = 56) -> None:
    settings = list(tables)
    print(title)
    print(f"{'':<{width}}" + "".join(f"{s:>14}" for s in settings))
    rows = dict.fromkeys(row for table in tables.values() for row in table)
    for row in rows:
        print(f"{row:<{width}}" + "".join(f"{tables[s].get(row, 0.0) / 2**30:>14.3f}" for s in settings))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m vertex_jax.bench.residuals",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/xray.py")
    parser.add_argument("--recompute", default="none,elementwise",
                        help="model.recompute settings, each optionally with :N, its "
                             "model.recompute_stages (elementwise:3)")
    parser.add_argument("--batchnorm", default="fused", help="model.batchnorm (fused: the GPU form)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from vertex_jax.bench.measure import environment

    table, sizes = {}, {}
    for setting in args.recompute.split(","):
        recompute, _, stages = setting.partition(":")
        overrides = {"model.recompute": recompute, "model.batchnorm": args.batchnorm}
        if stages:
            overrides["model.recompute_stages"] = int(stages)
        config = point_config(args.config, batch=1, remat=False, dtype=args.dtype, depthwise="conv",
                              overrides=overrides)
        residuals = saved_residuals_of(config, 1)  # traced once, read two ways
        table[setting], sizes[setting] = by_kind(residuals), by_size(residuals)
    canvas = "x".join(map(str, config.data.canvas))
    _print_table(f"GiB per training image kept for the backward pass: {config.model.variant} {canvas} "
                 f"{args.dtype}, batchnorm={args.batchnorm}\nby kind", table)
    _print_table("by feature-map size", sizes)
    doc = {"command": [sys.executable, "-m", "vertex_jax.bench.residuals", *(argv or sys.argv[1:])],
           "environment": environment(), "variant": config.model.variant, "canvas": canvas,
           "dtype": args.dtype, "batchnorm": args.batchnorm, "bytes_per_image": table,
           "bytes_per_image_by_size": sizes}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()

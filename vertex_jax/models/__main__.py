"""Print an EfficientNet's parameters per stage, GMACs and activation memory at a given size.

    python -m vertex_jax.models --variant b4 --height 1024 --width 512 [--dtype bfloat16]
        [--remat | --recompute elementwise [--recompute-stages 3]]

Nothing is initialised (abstract model), so this is quick even for B7 at full resolution.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from vertex_jax.cli import add_verbosity, user_errors
from vertex_jax.models.convolutions import DEPTHWISE_IMPLS
from vertex_jax.models.efficientnet import RECOMPUTE, STAGES, VARIANTS, EfficientNet
from vertex_jax.models.summary import format_summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vertex_jax.models", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b4", choices=sorted(VARIANTS))
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=1000, help="0 for no classifier")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                        help="compute dtype (sets the activation-memory figure)")
    parser.add_argument("--remat", action="store_true", help="rematerialise each block")
    parser.add_argument("--recompute", default="none", choices=RECOMPUTE,
                        help="what each block keeps for the backward pass (model.recompute)")
    parser.add_argument("--recompute-stages", type=int, default=STAGES,
                        help="how many stages recompute, from the first (model.recompute_stages)")
    parser.add_argument("--depthwise", default="conv", choices=DEPTHWISE_IMPLS,
                        help="depthwise layers as grouped convolutions (conv, as on GPUs: the "
                             "default), shifted multiply-adds (shifts) or auto (shifts on CPUs); "
                             "sets the XLA and activation-memory figures")
    parser.add_argument("--no-xla", action="store_true", help="skip XLA cost analysis and memory count")
    add_verbosity(parser)
    args = parser.parse_args(argv)
    if args.height < 32 or args.width < 32:
        parser.error("height and width must be at least 32")
    model = nnx.eval_shape(lambda: EfficientNet(
        args.variant, in_channels=args.in_channels, num_classes=args.num_classes or None,
        dtype=jnp.dtype(args.dtype), remat=args.remat, recompute=args.recompute,
        recompute_stages=args.recompute_stages, depthwise=args.depthwise, rngs=nnx.Rngs(0)))
    print(format_summary(model, args.height, args.width, xla=not args.no_xla, memory=not args.no_xla))


if __name__ == "__main__":
    sys.exit(user_errors(main)())

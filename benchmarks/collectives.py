"""The collectives of the compiled training step: how many all-reduces, how many bytes.

    JAX_NUM_CPU_DEVICES=4 python benchmarks/collectives.py --variant b4 [--height 64 --width 32]

Compiles the training step (``vertex_jax.train.step``) over every device (fake CPU devices
here, or the GPUs of a real machine) and lists its all-reduces by size. The count and
size do not depend on the image size (the parameters and per-channel BatchNorm
statistics do not), so a small canvas compiles quickly. Small all-reduces are latency
bound and mostly on the critical path (BatchNorm statistics over the global batch, in
the forward and the backward pass); the large ones carry the gradients. Used by the
scaling model in the README.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's vertex_jax

from vertex_jax.bench.measure import abstract_state, make_step, random_batch  # noqa: E402
from vertex_jax.config_files import load_config  # noqa: E402
from vertex_jax import mesh as meshlib  # noqa: E402

_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "f64": 8, "s64": 8}
_SHAPE = re.compile(r"\b(f32|bf16|f16|s32|u32|pred|f64|s64)\[([\d,]*)\]")


def all_reduce_sizes(hlo: str) -> list[int]:
    """Bytes of every all-reduce (start) in an HLO module's text; tuple operands summed."""
    sizes = []
    for line in hlo.splitlines():
        if not re.search(r"= .*\ball-reduce(-start)?\(", line):
            continue
        result = line.split("=", 1)[1].split("all-reduce", 1)[0]
        sizes.append(sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
                         for t, dims in _SHAPE.findall(result)))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="b4")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    config = load_config("configs/xray.py")
    config.model.variant, config.model.dtype, config.data.canvas = args.variant, args.dtype, (
        args.height, args.width)
    mesh = meshlib.make_mesh()
    n = mesh.devices.size
    config.batch_size = n
    graphdef, state, params = abstract_state(config)
    batch = meshlib.to_global(random_batch(config, n), mesh)
    compiled = make_step(config, "train", graphdef, mesh).lower(state, batch).compile()
    sizes = all_reduce_sizes(compiled.as_text())
    print(f"training step, {args.variant} ({params:,} parameters, {args.dtype}) on {n}x "
          f"{jax.devices()[0].device_kind}: {len(sizes)} all-reduces, {sum(sizes) / 1e6:.1f} MB")
    buckets = collections.Counter(10 ** math.floor(math.log10(s)) if s else 0 for s in sizes)
    for low in sorted(buckets):
        total = sum(s for s in sizes if (10 ** math.floor(math.log10(s)) if s else 0) == low)
        print(f"  {low:>12,} B and up: {buckets[low]:4d} all-reduces, {total / 1e6:9.3f} MB")


if __name__ == "__main__":
    main()

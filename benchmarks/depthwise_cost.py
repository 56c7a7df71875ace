"""Depthwise convolutions in XLA's cost analysis: analytic FLOPs vs what the compiler reports.

    python benchmarks/depthwise_cost.py                       # one depthwise layer
    python benchmarks/depthwise_cost.py --model b4 --height 1024 --width 512 --batch 2

Part 1, one depthwise convolution (``feature_group_count = C``) at a small size: its
forward pass and both gradients, analytic FLOPs (every tap) beside XLA's cost analysis of
the lowered (backend-independent) and of the compiled program, the compiled HLO of the
kernel gradient, and the measured time of each. Part 2 (``--model``): the whole training
step of that EfficientNet variant, analytic FLOPs (``vertex_jax.bench.flops``), the same
count with every batch-grouped convolution (the depthwise kernel gradients) made dense —
the rewrite a backend without grouped-convolution kernels applies — and XLA's figure for
the compiled step. Findings: ``docs/performance-notes.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's vertex_jax

from vertex_jax.bench.flops import conv_flops, count_flops, jaxpr_flops  # noqa: E402


def dense_batch_groups(eqn) -> int:
    """A convolution's FLOPs once its batch groups are expanded into a dense convolution."""
    return conv_flops(eqn) * eqn.params["batch_group_count"]


def _seconds(compiled, *args, repeats: int = 5) -> float:
    jax.block_until_ready(compiled(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(compiled(*args))
    return (time.perf_counter() - t0) / repeats


def one_layer(batch: int, height: int, width: int, channels: int, kernel: int) -> None:
    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", feature_group_count=channels,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x = jnp.ones((batch, height, width, channels))
    k = jnp.ones((kernel, kernel, 1, channels))
    programs = {"forward": conv,
                "grad input": jax.grad(lambda x, k: conv(x, k).sum(), argnums=0),
                "grad kernel": jax.grad(lambda x, k: conv(x, k).sum(), argnums=1)}
    print(f"depthwise {kernel}x{kernel}, x [{batch}, {height}, {width}, {channels}] on "
          f"{jax.devices()[0].device_kind}")
    print(f"{'program':<12}{'analytic':>12}{'XLA lowered':>13}{'XLA compiled':>14}"
          f"{'compiled/analytic':>19}{'ms':>9}")
    for name, fn in programs.items():
        lowered = jax.jit(fn).lower(x, k)
        compiled = lowered.compile()
        # Gradients include their forward pass in neither count: XLA removes it (unused).
        analytic = count_flops(fn, x, k).total - (count_flops(conv, x, k).total if name != "forward" else 0)
        flops_l, flops_c = lowered.cost_analysis()["flops"], compiled.cost_analysis()["flops"]
        print(f"{name:<12}{analytic:>12.4g}{flops_l:>13.4g}{flops_c:>14.4g}{flops_c / analytic:>19.1f}"
              f"{_seconds(compiled, x, k) * 1e3:>9.2f}")
        if name == "grad kernel":
            convs = [line.strip() for line in compiled.as_text().splitlines() if "convolution(" in line]
            print("compiled kernel-gradient convolution:\n  " + "\n  ".join(convs))


def whole_step(variant: str, height: int, width: int, batch: int) -> None:
    from vertex_jax.bench.measure import abstract_state, make_step, random_batch
    from vertex_jax.config_files import load_config
    from vertex_jax import mesh as meshlib

    config = load_config("configs/xray.py")
    config.model.variant, config.data.canvas, config.batch_size = variant, (height, width), batch
    if "depthwise" in config.model:
        config.model.depthwise = "conv"  # XLA grouped convolutions, whatever the backend
    mesh = meshlib.make_mesh()
    graphdef, state, _ = abstract_state(config)
    step = make_step(config, "train", graphdef, mesh)
    batch_arrays = meshlib.to_global(random_batch(config, batch), mesh)
    jaxpr = step.trace(state, batch_arrays).jaxpr
    analytic = jaxpr_flops(jaxpr).total
    dense = jaxpr_flops(jaxpr, conv_cost=dense_batch_groups).total
    t0 = time.perf_counter()
    compiled = step.lower(state, batch_arrays).compile()
    compile_s = time.perf_counter() - t0
    xla = compiled.cost_analysis()["flops"] * mesh.devices.size
    print(f"\ntraining step, {variant} {height}x{width} batch {batch} on {mesh.devices.size}x "
          f"{jax.devices()[0].device_kind} (compiled in {compile_s:.0f} s):")
    print(f"  analytic (conv + matmul, every tap)       {analytic / 1e9:10.1f} GFLOP "
          f"({analytic / batch / 1e9:.1f} per image)")
    print(f"  same, batch-grouped convolutions dense    {dense / 1e9:10.1f} GFLOP")
    print(f"  XLA cost analysis of the compiled step    {xla / 1e9:10.1f} GFLOP "
          f"({xla / analytic:.1f}x analytic)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=96)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=3, default=(2, 64, 32), metavar=("B", "H", "W"))
    parser.add_argument("--model", help="also the training step of this variant (b0..b7, tiny)")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    one_layer(*args.size, args.channels, args.kernel)
    if args.model:
        whole_step(args.model, args.height, args.width, args.batch)


if __name__ == "__main__":
    main()

"""XLA:CPU options on one training step: a bench run per flag set, one after another.

    python benchmarks/cpu_flags.py --out benchmarks/results/cpu_flags_demo \
        [--config configs/xray.py:demo] [--sets default,onednn,...] [--steps 5 --repeats 3]

Each set runs ``python -m vertex_jax.bench --what=train`` in a fresh process with
``XLA_FLAGS`` set (and any environment variables the set names), writes
``OUT/<set>.json`` and prints images/s of each timed run with user and system CPU seconds
per step. An option this jaxlib does not know fails its set, not the sweep.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

# name -> (XLA_FLAGS, extra environment)
FLAG_SETS: dict[str, tuple[str, dict[str, str]]] = {
    # The entry points restart with glibc's huge-page tunable (vertex_jax.hugepages); this set
    # turns that off: malloc's 4 KiB pages, the state before.
    "no_hugepages": ("", {"VERTEX_HUGEPAGES": "0"}),
    "default": ("", {}),
    "onednn": ("--xla_cpu_use_onednn=true", {}),
    "xnnpack": ("--xla_cpu_use_xnnpack=true", {}),
    "xnn_graph_greedy": ("--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY", {}),
    "fast_math": ("--xla_cpu_enable_fast_math=true", {}),
    "vector_512": ("--xla_cpu_prefer_vector_width=512", {}),
    "concurrency_scheduler": ("--xla_cpu_enable_concurrency_optimized_scheduler=true", {}),
    "eigen_1_thread": ("--xla_cpu_multi_thread_eigen=false", {}),
}


def run_set(name: str, args: argparse.Namespace) -> dict | None:
    xla_flags, extra = FLAG_SETS[name]
    out = Path(args.out) / f"{name}.json"
    env = os.environ | extra | {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()}
    cmd = [sys.executable, "-m", "vertex_jax.bench", f"--config={args.config}", "--what=train",
           f"--steps={args.steps}", f"--repeats={args.repeats}", f"--json={out}", *args.bench_flag]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"{name}: failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    (record,) = json.loads(out.read_text())["records"]
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="configs/xray.py:demo")
    p.add_argument("--sets", default=",".join(FLAG_SETS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bench-flag", action="append", default=[], help="passed on to the bench")
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    names = args.sets.split(",")
    if unknown := [n for n in names if n not in FLAG_SETS]:
        p.error(f"unknown set(s) {unknown}; known: {list(FLAG_SETS)}")
    print(f"{'set':<22} {'images/s per run':<24} {'median':>7} {'user s/step':>12} {'sys s/step':>11}")
    for name in names:
        r = run_set(name, args)
        if r is None:
            continue
        rates = [r["batch"] / s for s in r["step_s_runs"]]
        print(f"{name:<22} {' / '.join(f'{x:.1f}' for x in rates):<24} {statistics.median(rates):>7.1f} "
              f"{r['cpu_user_s_per_step']:>12.3f} {r['cpu_system_s_per_step']:>11.3f}", flush=True)


if __name__ == "__main__":
    main()

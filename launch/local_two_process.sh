#!/usr/bin/env bash
# Two processes on one machine: one per GPU (GPUs 0 and 1), or a CPU rehearsal of a
# multi-host run (JAX_PLATFORMS=cpu). Each process reads its half of every global batch.
# Usage: launch/local_two_process.sh WORKDIR [overrides]; PORT (default 12355) must be free.
# If one process fails the other is stopped (it would wait for its peer forever).
set -euo pipefail
workdir=$1; shift
port=${PORT:-12355}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for i in 0 1; do
  CUDA_VISIBLE_DEVICES=$i python -m vertex_jax.main --config=configs/xray.py --workdir="$workdir" \
    --coordinator=127.0.0.1:$port --num_processes=2 --process_id=$i "$@" &
  pids+=($!)
done
for _ in "${pids[@]}"; do
  wait -n || { echo "a training process failed; stopping the other" >&2; exit 1; }
done
trap - EXIT

#!/usr/bin/env bash
# Two processes on one machine (e.g. one per GPU, or a CPU rehearsal of a multi-host run).
# Usage: launch/local_two_process.sh WORKDIR [overrides]; port 12355 must be free.
set -euo pipefail
workdir=$1; shift
for i in 0 1; do
  CUDA_VISIBLE_DEVICES=$i python -m vertex_jax.main --config=configs/xray.py --workdir="$workdir" \
    --coordinator=127.0.0.1:12355 --num_processes=2 --process_id=$i "$@" &
done
wait

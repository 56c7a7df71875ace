#!/usr/bin/env bash
# One host, every local GPU: a single process drives all devices (jax.jit shards the batch).
# Usage: launch/local.sh [WORKDIR] [extra --config.* overrides]
# The global batch must divide over the devices: the paper's 30 does not over 4 GPUs, so
# this uses 32 (divides over 1, 2, 4, 8, 16, 32 devices); a later override wins.
set -euo pipefail
workdir=${1:-runs/xray}; shift || true
exec python -m vertex_jax.main --config=configs/xray.py --workdir="$workdir" \
  --config.batch_size=32 --config.eval_batch_size=32 "$@"

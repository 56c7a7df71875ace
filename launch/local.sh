#!/usr/bin/env bash
# One host, every local GPU: a single process drives all devices (jax.jit shards the batch).
# Usage: launch/local.sh [WORKDIR] [extra --config.* overrides]
set -euo pipefail
workdir=${1:-runs/xray}; shift || true
exec python -m vertex_jax.main --config=configs/xray.py --workdir="$workdir" "$@"

#!/usr/bin/env bash
# One-shot GPU check: EfficientNet-B4 + clinical fusion at 1024x512 in bf16 on one
# H100/H200 in one run of under 10 minutes -- cold and warm compile, the JAX training step
# and each lever against it, torch.compile in the same run, evaluation, the training loop,
# the winning combination, larger batches, a profile -- into ONE JSON
# (python -m vertex_jax.bench.gpu_check; its docstring).
#
#   bash benchmarks/gpu_check.sh [gpu_check flags: --points=a,b --budget-s=S --dry ...]
#
# On the lent machine (device tool), from the repo root:
#   run(command="bash benchmarks/gpu_check.sh", carry=["benchmarks/wheels"], timeout_s=600)
# The result comes back as $OUT/gpu_check.json (+ gpu_check.log; KEEP_TRACE=1: profile.xplane.pb
# and the profiled program's text, profile.hlo.txt.gz); copy
# it to benchmarks/results/gpu_check_<gpu>.json here. A rerun of the points that did not
# fit: the JSON's "rerun" field, e.g. bash benchmarks/gpu_check.sh --points=jax-eval-b16,...
# XLA's autotuning results of the run come back as $OUT/autotune_results.tar.gz: to ship
# them (a fresh machine with that GPU and jaxlib then skips their autotuning,
# vertex_jax/compile_cache.py), tar xzf it -C vertex_jax/autotune_results and commit.
#
# The machine reaches no package registry and lacks grain, array-record, ml-collections,
# pydicom and tensorboardX; the check itself needs none of them (the project is put on
# PYTHONPATH, no install). Wheels in benchmarks/wheels/ (git-ignored, ~7 MB) are installed
# when present -- they serve the loop bench. Download them here for Python 3.12:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 \
#     --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 -d benchmarks/wheels \
#     grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 pydicom==3.0.2 tensorboardX==2.6.5 \
#     portpicker pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pyjpegls
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The PyTorch peer compiles (and allocates ~22-36 GiB) beside the JAX points: JAX takes 65%
# of an H200 (93 GiB), 55% of an 80 GB H100 (44 GiB: batch 32 peaked at 30 GiB on the H200;
# batch 64 without model.recompute, ~57 GiB, then fails alone and says so in its point).
MEM_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
if [ -n "${MEM_MIB:-}" ] && [ "${MEM_MIB%%.*}" -lt 100000 ] 2>/dev/null; then FRACTION=0.55; else FRACTION=0.65; fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-$FRACTION}
OUT_DIR=${OUT:-}
LOG=${OUT_DIR:+$OUT_DIR/gpu_check.log}
LOG=${LOG:-/tmp/gpu_check.log}

if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/gpu_check_site benchmarks/wheels/*.whl; then
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
  else
    echo "gpu_check.sh: carried wheels did not install; going on without them" >&2
  fi
fi

nvidia-smi 2>/dev/null | head -15
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
SLUG=$(echo "${GPU:-cpu}" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '_' | sed 's/_$//')
case " $* " in *" --dry "*) SLUG="dry_$SLUG" ;; esac
JSON=${OUT_DIR:+$OUT_DIR/gpu_check.json}  # on the lent machine: straight to $OUT (a kill keeps it)
JSON=${JSON:-benchmarks/results/gpu_check_${SLUG}.json}
TRACE=${KEEP_TRACE:+${OUT_DIR:+--keep-trace=$OUT_DIR/profile.xplane.pb}}  # KEEP_TRACE=1: the raw trace too
AUTOTUNE=${OUT_DIR:+--keep-autotune=$OUT_DIR/autotune_results.tar.gz}

$PY -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tee "$LOG"
# The driver keeps its own budget (--budget-s, default 500 s); this is the backstop.
timeout -k 10 575 $PY -m vertex_jax.bench.gpu_check --json="$JSON" ${TRACE:-} ${AUTOTUNE:-} "$@" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
echo "gpu_check.sh: exit $rc, result $JSON"
exit "$rc"

#!/usr/bin/env bash
# Rehearse launch/slurm.sbatch on a real SLURM scheduler on this one machine, on CPU.
#
# As root: starts a private one-node cluster (munged, slurmctld, slurmd on localhost,
# 2 CPUs, all state in a temporary directory), submits the project's own
# launch/slurm.sbatch with 2 tasks (JAX_PLATFORMS=cpu, JAX_NUM_CPU_DEVICES=1 per task:
# 2 processes x 1 device = 2 global devices) on the tiny config, and checks:
#   1. both tasks joined one JAX run through SLURM's variables alone (no --coordinator);
#   2. the run finished and its final arrays equal a one-process run with 2 CPU devices;
#   3. scancel --signal=TERM mid-epoch: the job saves and exits 0, the same sbatch
#      command resumes and ends bit-identical to the uninterrupted SLURM run;
#   4. kill -9 of rank 1: the job ends with srun's message, within a bound, and the same
#      command resumes from the last checkpoint and ends bit-identical; then (4b) the same
#      with srun's kill-on-bad-exit off, to see whether JAX's heartbeat alone ends the job
#      (VERTEX_HEARTBEAT_TIMEOUT_S, read by vertex_jax/mesh.py if that version has it).
# Then it stops every daemon it started (by pid), checks that no process of its cluster
# is left and deletes the state directory. Report: benchmarks/results/slurm_rehearsal.txt.
#
# Usage (from anywhere, as root):  launch/rehearse_slurm.sh [--no-install] [--report=FILE]
# Debian packages, installed with apt-get only if a command is missing (no recommends):
#   munge (munged, mungekey), slurmctld, slurmd, slurm-client (sbatch, srun, sinfo, ...)
#   (slurm-wlm is the metapackage of the last three plus extras not needed here).
# Environment: PYTHON (default <repo>/.venv/bin/python), KEEP_STATE=1 keeps the state dir,
#   HEARTBEAT_S (default 10, check 4b), EPOCHS (default 4), JOB_LIMIT_S (default 600: any
#   job still running after this is cancelled and its check fails).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
report=$repo/benchmarks/results/slurm_rehearsal.txt
install=1
for a in "$@"; do
  case $a in
    --no-install) install=0 ;;
    --report=*) report=${a#--report=} ;;
    *) echo "usage: $0 [--no-install] [--report=FILE]" >&2; exit 2 ;;
  esac
done
python=${PYTHON:-$repo/.venv/bin/python}
epochs=${EPOCHS:-4}
heartbeat_s=${HEARTBEAT_S:-10}
job_limit_s=${JOB_LIMIT_S:-600}
[[ $(id -u) == 0 ]] || { echo "run as root (slurmd and munged run as root here)" >&2; exit 2; }
t_start=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

need=(munged mungekey slurmctld slurmd sbatch srun sinfo squeue scancel scontrol)
missing=$(for c in "${need[@]}"; do command -v "$c" >/dev/null || echo "$c"; done)
if [[ -n $missing ]]; then
  ((install)) || { echo "missing: $missing (run without --no-install)" >&2; exit 2; }
  echo "installing from Debian: munge slurmctld slurmd slurm-client"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    munge slurmctld slurmd slurm-client >/dev/null
fi

state=$(mktemp -d /tmp/vertex-slurm.XXXXXX)
chmod 711 "$state"  # munged wants every directory above its socket searchable
mkdir -p "$state"/{munge,ctld,spool,logs,runs}
chmod 700 "$state"/{ctld,spool,logs,runs}; chmod 755 "$state/munge"
pids=()           # daemons we started: munged slurmctld slurmd
declare -A name_of
export SLURM_CONF=$state/slurm.conf

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*"; }

our_procs() {  # every process carrying our SLURM_CONF (daemons, slurmstepd, tasks), not ours
  local p me=$BASHPID
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ $p == "$$" || $p == "$me" || $(ps -o ppid= -p "$p" 2>/dev/null | tr -d ' ') == "$me" ]] && continue
    grep -qzx "SLURM_CONF=$SLURM_CONF" "/proc/$p/environ" 2>/dev/null && echo "$p"
  done
  return 0
}

cleanup() {
  local rc=$? p i left
  trap - EXIT INT TERM
  set +e
  if [[ -S $state/munge/munge.sock ]] && kill -0 "${pids[1]:-0}" 2>/dev/null; then
    scancel --quiet --signal=KILL $(squeue -h -o %i 2>/dev/null) 2>/dev/null
    for i in $(seq 30); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 1; done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do  # slurmd, slurmctld, then munged
    p=${pids[i]}
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$p" 2>/dev/null && { echo "${name_of[$p]} ($p) ignored SIGTERM; SIGKILL"; kill -KILL "$p"; }
    wait "$p" 2>/dev/null
  done
  left=$(our_procs)
  if [[ -n $left ]]; then
    echo "left behind, killed: $(ps -o pid=,comm= -p $left | tr '\n' ' ')"
    kill -KILL $left 2>/dev/null
  fi
  echo "daemons stopped (munged, slurmctld, slurmd: pids ${pids[*]}); no process of the cluster left"
  if [[ ${KEEP_STATE:-0} == 1 ]]; then echo "state kept in $state"; else rm -rf "$state" && echo "$state removed"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ctld_port=$(free_port); slurmd_port=$(free_port)

# --- munge: own key, socket and logs in the state dir --------------------------------------
mungekey --create --keyfile="$state/munge/munge.key" >/dev/null 2>&1 ||
  { dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none; }
chmod 400 "$state/munge/munge.key"
munged --foreground --key-file="$state/munge/munge.key" --socket="$state/munge/munge.sock" \
  --pid-file="$state/munge/munged.pid" --log-file="$state/logs/munged.log" \
  --seed-file="$state/munge/munge.seed" >>"$state/logs/munged.stdout" 2>&1 &
pids+=($!); name_of[$!]=munged
for _ in $(seq 50); do [[ -S $state/munge/munge.sock ]] && break; sleep 0.1; done
[[ -S $state/munge/munge.sock ]] || { echo "munged did not start:"; cat "$state"/logs/munged.*; exit 1; }

# --- slurm.conf: one node "localhost", 2 CPUs, one partition ------------------------------
cat >"$SLURM_CONF" <<EOF
ClusterName=rehearsal
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$state/munge/munge.sock
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/logs/slurmctld.log
SlurmdLogFile=$state/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=rehearsal Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
slurmctld -D -i -f "$SLURM_CONF" >"$state/logs/slurmctld.stdout" 2>&1 &
pids+=($!); name_of[$!]=slurmctld
slurmd -D -N localhost -f "$SLURM_CONF" >"$state/logs/slurmd.stdout" 2>&1 &
pids+=($!); name_of[$!]=slurmd
log "munged ${pids[0]}, slurmctld ${pids[1]}, slurmd ${pids[2]}; state in $state"
t0=$(date +%s)
until [[ $(sinfo -h -N -n localhost -o %t 2>/dev/null) == idle ]]; do
  if (($(date +%s) - t0 > 60)); then
    echo "node not idle after 60 s:"; sinfo -N 2>&1; tail -20 "$state"/logs/slurm*.log; exit 1
  fi
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "${name_of[$p]} exited"; tail -20 "$state"/logs/*; exit 1; }; done
  sleep 0.5
done
log "sinfo: $(sinfo -h -N -o '%N %t %c CPUs') after $(($(date +%s) - t0)) s"

# --- the jobs -------------------------------------------------------------------------------
data=$state/data    # one synthetic cohort and cache, one compilation cache, for every run
steps_per_epoch=7   # 28 training rows of the tiny cohort // global batch 4
# The tiny config with a batch of 4 (2 per process; 7 steps an epoch, so a signal lands
# mid-epoch) and $epochs epochs (several tie on AUROC with the tiny cohort: the earliest of a
# tie is the best step, and retention keeps it).
overrides=(--config.data.data_dir="$data" --config.num_epochs="$epochs" --config.log_every_steps=1
           --verbosity=0)
total_steps=$((epochs * steps_per_epoch))
export JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1 JAX_COMPILATION_CACHE_DIR=$data/jit \
  JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 CONFIG=configs/xray.py:tiny BATCH_SIZE=4 \
  PYTHON=$python
unset MANIFEST

submit() {  # submit NAME WORKDIR [sbatch options...] -> job id; the same command every time
  local name=$1 workdir=$2; shift 2
  sbatch --parsable --chdir="$repo" --job-name="vj-$name" --output="$state/logs/$name-%j.out" \
    --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 --time=30 "$@" \
    "$repo/launch/slurm.sbatch" "$workdir" "${overrides[@]}"
}
job_field() { scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"; }
wait_job() {  # wait_job ID: until it ends; after JOB_LIMIT_S cancels it, sets timed_out=1
  local id=$1 t=$(date +%s)
  timed_out=0
  while [[ $(job_field "$id" JobState) =~ ^(PENDING|RUNNING|CONFIGURING|COMPLETING)$ ]]; do
    if (($(date +%s) - t > job_limit_s)); then
      echo "job $id still running after $job_limit_s s: cancelled" >&2; scancel --signal=KILL "$id"; timed_out=1; sleep 2
    fi
    sleep 0.5
  done
}
last_step() {  # highest checkpoint step in a workdir (0 if none)
  ls "$1/checkpoints" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1 || true
}
logged_step() {  # latest step in metrics.jsonl
  [[ -f $1/metrics.jsonl ]] && sed -n 's/^{"step": \([0-9]*\),.*/\1/p' "$1/metrics.jsonl" | tail -1 || true
}
compare() {  # compare DIR_A DIR_B STEP -> "identical" | "differ max|diff|=..." (exit 0/1)
  "$python" - "$@" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from vertex_jax.runs import model_arrays
def arrays(workdir, step):
    return model_arrays(Path(workdir) / "checkpoints" / step)
a, b = arrays(sys.argv[1], sys.argv[3]), arrays(sys.argv[2], sys.argv[3])
assert a.keys() == b.keys(), (sorted(a)[:3], sorted(b)[:3])
diff = {k: float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) if a[k].size else 0.0 for k in a}
bad = {k: v for k, v in diff.items() if v or not np.array_equal(a[k], b[k])}
if not bad:
    print(f"identical ({len(a)} arrays)")
else:
    worst = max(bad, key=bad.get)
    print(f"differ in {len(bad)}/{len(a)} arrays, max |diff| {bad[worst]:.3g} ({worst})")
    sys.exit(1)
EOF
}
declare -A result figures
pass() { result[$1]=PASS; figures[$1]=$2; log "check $1 PASS: $2"; }
fail() { result[$1]=FAIL; figures[$1]=$2; log "check $1 FAIL: $2"; }
secs() { echo $(($(date +%s) - $1)); }

# reference: one process, 2 CPU devices, same config, outside SLURM (also builds the cohort
# and the compilation cache for the jobs)
log "one-process reference run (2 CPU devices)"
t=$(date +%s)
(cd "$repo" && JAX_NUM_CPU_DEVICES=2 BATCH_SIZE= "$python" -m vertex_jax.main --config="$CONFIG" \
  --workdir="$state/runs/single" --config.batch_size=4 --config.eval_batch_size=4 "${overrides[@]}") \
  >"$state/logs/single.out" 2>&1 || { tail -30 "$state/logs/single.out"; exit 1; }
single_s=$(secs "$t")
log "reference done in $single_s s, step $(last_step "$state/runs/single")"

# 1 + 2: uninterrupted SLURM run
log "job A: uninterrupted, 2 tasks"
t=$(date +%s); a=$(submit full "$state/runs/full"); wait_job "$a"; full_s=$(secs "$t")
alog=$state/logs/full-$a.out
a_state=$(job_field "$a" JobState); a_exit=$(job_field "$a" ExitCode)
joined=$(grep -c -E "process [01] of 2, 1 local / 2 global devices" "$alog" || true)
coord=$(grep -o -m1 -E "Connecting to JAX distributed service on [^ ]+" "$alog" | awk '{print $NF}' || true)
if [[ $joined == 2 ]] && ! grep -q -- "--coordinator" "$repo/launch/slurm.sbatch" && [[ $a_state == COMPLETED ]]; then
  pass 1 "job $a: ranks 0 and 1 each logged 'process i of 2, 1 local / 2 global devices'; coordinator ${coord:-?} derived by JAX from SLURM_STEP_NODELIST and SLURM_JOB_ID; no --coordinator flag"
else
  fail 1 "job $a $a_state, $joined of 2 'process i of 2' lines; log $alog"
fi
a_step=$(last_step "$state/runs/full")
if [[ $a_state == COMPLETED && $a_exit == 0:0 && $a_step == "$total_steps" ]]; then
  cmp=$(compare "$state/runs/single" "$state/runs/full" "$total_steps") && ok=1 || ok=0
  if ((ok)); then pass 2 "job $a COMPLETED in ${full_s} s (one-process run ${single_s} s), step $a_step: $cmp vs one process x 2 devices"
  else fail 2 "job $a step $a_step: $cmp vs one process x 2 devices"; fi
else
  fail 2 "job $a $a_state exit $a_exit step ${a_step:-none} (want $total_steps); log $alog"; tail -20 "$alog"
fi

# 3: SIGTERM mid-epoch through scancel, then the same command again
log "job B: scancel --signal=TERM in epoch 2, then resubmit"
wb=$state/runs/preempt
t=$(date +%s); b=$(submit preempt "$wb")
until s=$(logged_step "$wb"); [[ ${s:-0} -gt $steps_per_epoch ]] || [[ ! $(job_field "$b" JobState) =~ ^(PENDING|RUNNING)$ ]]; do sleep 0.1; done
sig_at=${s:-0}; scancel --signal=TERM "$b"; t_sig=$(date +%s.%N)
wait_job "$b"; b_s=$(secs "$t")
b_state=$(job_field "$b" JobState); b_exit=$(job_field "$b" ExitCode)
saved=$(last_step "$wb"); blog=$state/logs/preempt-$b.out
t=$(date +%s); b2=$(submit preempt "$wb"); wait_job "$b2"; b2_s=$(secs "$t")
b2log=$state/logs/preempt-$b2.out
resumed=$(grep -o -m1 -E "resumed from .* at step [0-9]+" "$b2log" | grep -o -E "[0-9]+$" || true)
if [[ $b_state == COMPLETED && $b_exit == 0:0 ]] && grep -q "resume with the same command" "$blog" &&
   [[ -n $resumed && $resumed == "$saved" && $(last_step "$wb") == "$total_steps" ]]; then
  cmp=$(compare "$state/runs/full" "$wb" "$total_steps") && ok=1 || ok=0
  where="step $saved = epoch $((saved / steps_per_epoch + 1)), step $((saved % steps_per_epoch)) of $steps_per_epoch"
  ((saved % steps_per_epoch)) || where="step $saved (an epoch end: the signal came after the epoch's last step)"
  f="SIGTERM at logged step $sig_at; job $b saved $where, exit 0:0 in ${b_s} s; job $b2 resumed at step $resumed, ended step $total_steps in ${b2_s} s: $cmp vs job A"
  if ((ok)); then pass 3 "$f"; else fail 3 "$f"; fi
else
  fail 3 "job $b $b_state exit $b_exit saved ${saved:-none}; job $b2 resumed at ${resumed:-?}, step $(last_step "$wb"); logs $blog $b2log"
  tail -15 "$blog" "$b2log"
fi

# 4: kill -9 of rank 1 mid-epoch, then the same command again
rank_pid() {  # rank_pid JOB RANK -> pid of that task's python
  local p
  for p in /proc/[0-9]*; do
    grep -qzx "SLURM_JOB_ID=$1" "$p/environ" 2>/dev/null && grep -qzx "SLURM_PROCID=$2" "$p/environ" 2>/dev/null &&
      grep -qz "vertex_jax.main" "$p/cmdline" 2>/dev/null && { echo "${p#/proc/}"; return; }
  done
  return 0
}
kill_rank() {  # kill_rank NAME WORKDIR [sbatch options] -> sets k_id k_step k_pid k_end_s
  local name=$1 w=$2; shift 2
  k_id=$(submit "$name" "$w" "$@")
  until s=$(logged_step "$w"); [[ ${s:-0} -gt $((steps_per_epoch + 1)) && -n $(last_step "$w") ]] ||
        [[ ! $(job_field "$k_id" JobState) =~ ^(PENDING|RUNNING)$ ]]; do sleep 0.1; done
  k_step=${s:-0}; k_pid=$(rank_pid "$k_id" 1)
  [[ -n $k_pid ]] && kill -KILL "$k_pid"
  local t=$(date +%s.%N)
  wait_job "$k_id"
  k_end_s=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $t}")
}
log "job C: kill -9 of rank 1 in epoch 2 (srun --kill-on-bad-exit=1, the sbatch default)"
wc=$state/runs/kill
kill_rank kill "$wc"; c=$k_id
c_state=$(job_field "$c" JobState); c_exit=$(job_field "$c" ExitCode); clog=$state/logs/kill-$c.out
c_saved=$(last_step "$wc")
c_msg=$(grep -m2 -E "^srun: error" "$clog" | paste -sd'|' | sed 's/|/ | /' || true)
c_rank0=$(grep -m1 -o -E "Gloo all-reduce failed: .*Connection closed by peer" "$clog" | sed 's/: \[.*\]/:/' || true)
[[ -n $c_rank0 ]] && c_msg+="; rank 0 had already raised JaxRuntimeError: $c_rank0"
t=$(date +%s); c2=$(submit kill "$wc"); wait_job "$c2"; c2_s=$(secs "$t")
c2log=$state/logs/kill-$c2.out
c_resumed=$(grep -o -m1 -E "resumed from .* at step [0-9]+" "$c2log" | grep -o -E "[0-9]+$" || true)
if [[ -n $k_pid && $c_state != COMPLETED && -n $c_msg && -n $c_resumed && $c_resumed == "$c_saved" &&
      $(last_step "$wc") == "$total_steps" ]]; then
  cmp=$(compare "$state/runs/full" "$wc" "$total_steps") && ok=1 || ok=0
  f="kill -9 of rank 1 (pid $k_pid) at logged step $k_step; job $c ended $c_state (exit $c_exit) $k_end_s s later: '$c_msg'; job $c2 resumed at step $c_resumed (last checkpoint), ended step $total_steps in ${c2_s} s: $cmp vs job A"
  if ((ok)); then pass 4 "$f"; else fail 4 "$f"; fi
else
  fail 4 "job $c $c_state exit $c_exit, killed pid ${k_pid:-none} at step $k_step, msg '${c_msg}'; job $c2 resumed at ${c_resumed:-?}; logs $clog $c2log"
  tail -15 "$clog" "$c2log"
fi

# 4b: the same without srun's kill-on-bad-exit: what JAX alone does about a lost peer
log "job D: kill -9 of rank 1 with KILL_ON_BAD_EXIT=0, VERTEX_HEARTBEAT_TIMEOUT_S=$heartbeat_s"
wd=$state/runs/heartbeat
KILL_ON_BAD_EXIT=0 VERTEX_HEARTBEAT_TIMEOUT_S=$heartbeat_s VERTEX_SHUTDOWN_TIMEOUT_S=$heartbeat_s \
  kill_rank heartbeat "$wd"
d=$k_id; d_state=$(job_field "$d" JobState); dlog=$state/logs/heartbeat-$d.out
d_msg=$( {
  grep -m1 -o -E "Gloo all-reduce failed: .*Connection closed by peer" "$dlog" | sed 's/: \[.*\]/:/'
  grep -m1 -o -E "Task [0-9]+ heartbeat timeout" "$dlog"
  grep -m1 -o -E "Terminating process because the JAX distributed service detected fatal errors" "$dlog"
  grep -m1 -E "^srun: error" "$dlog"
} | paste -sd'|' | sed 's/|/ | /g' || true)
if ((timed_out)); then
  figures[4b]="rank 0 still running $job_limit_s s after rank 1 died: a hang, cut by this script"
else
  figures[4b]="job $d ended $d_state $k_end_s s after kill -9 of rank 1 (heartbeat timeout $heartbeat_s s): '${d_msg}'"
fi
grep -q VERTEX_HEARTBEAT_TIMEOUT_S "$repo/vertex_jax/mesh.py" ||
  figures[4b]+=" [vertex_jax/mesh.py does not read VERTEX_HEARTBEAT_TIMEOUT_S: JAX's default 100 s applied]"
log "check 4b (informative): ${figures[4b]}"

# --- report ---------------------------------------------------------------------------------
total_s=$(secs "$t_start")
npass=0; for k in 1 2 3 4; do [[ ${result[$k]:-FAIL} == PASS ]] && npass=$((npass + 1)); done
jaxv=$("$python" -c 'import jax, jaxlib, orbax.checkpoint as o; print(f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, orbax-checkpoint {o.__version__}")' 2>/dev/null)
mkdir -p "$(dirname "$report")"
{
  echo "SLURM rehearsal of launch/slurm.sbatch (launch/rehearse_slurm.sh)"
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), Debian $(cat /etc/debian_version); load average $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end (other work shares the CPUs)"
  echo "versions: $(slurmctld -V), munge $(munged -V 2>&1 | awk '{print $1}' | sed 's/munge-//'), $jaxv, $("$python" -V)"
  echo "cluster: 1 node (localhost, 2 CPUs), select/cons_tres CR_CPU, proctrack/linuxproc, auth/munge; state in a temp dir, removed"
  echo "jobs: sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 launch/slurm.sbatch WORKDIR"
  echo "      with CONFIG=configs/xray.py:tiny BATCH_SIZE=4 JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=1 (2 processes x 1 device),"
  echo "      $epochs epochs x $steps_per_epoch steps = $total_steps steps"
  echo
  for k in 1 2 3 4; do echo "check $k: ${result[$k]:-FAIL}: ${figures[$k]:-not run}"; done
  echo "check 4b (informative, not counted): ${figures[4b]:-not run}"
  echo
  echo "result: $npass/4 checks passed; rehearsal wall time ${total_s} s (one-process run ${single_s} s, job A ${full_s} s)"
} | tee "$report.tmp"
mv "$report.tmp" "$report"
echo "report: $report"
((npass == 4))

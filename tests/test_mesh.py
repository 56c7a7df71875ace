"""Processes meet before a new program runs: two real JAX processes on loopback."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax

from vertex_jax import mesh as meshlib

REPO = Path(__file__).resolve().parents[1]

# Process 1 is late by LATE seconds before each call. Process 0 prints how long its calls took:
# the first (a new shape) must have waited for process 1 to compile; the second (same shape)
# runs at once. The program has no collective, so only the barrier can make process 0 wait.
SCRIPT = """
import sys, time
import jax, numpy as np
from vertex_jax import mesh as meshlib
port, pid, late = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
jax.distributed.initialize(f"127.0.0.1:{port}", 2, pid)
meshlib.barrier("started")
add = meshlib.compiled_together(jax.jit(lambda x: x + 1), "add")
took = []
for _ in range(2):
    if pid == 1:
        time.sleep(late)
    start = time.perf_counter()
    out = add(np.arange(3.0))
    took.append(time.perf_counter() - start)
    assert np.allclose(out, [1, 2, 3]), out
meshlib.barrier("done")
print("took", *took)
"""


def test_one_process_gets_the_jitted_function_itself():
    jitted = jax.jit(lambda x: x * 2)
    assert meshlib.compiled_together(jitted, "double") is jitted


def test_a_new_program_runs_only_once_every_process_has_compiled_it():
    late = 4.0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(port), str(i), str(late)], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    first, second = map(float, outs[0].split("took")[-1].split())
    assert first >= late * 0.9, first  # waited at the barrier for the late process
    assert second < late * 0.5, second  # the same shape: compiled already, no barrier

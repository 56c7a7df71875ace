"""Huge pages for XLA:CPU's malloc: when the entry points restart, and with what environment."""

import os
import subprocess
import sys
from pathlib import Path

from vertex_jax import hugepages

ROOT = Path(__file__).resolve().parents[1]


def _clean(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VERTEX_HUGEPAGES")}
    return env | extra


def test_no_restart_when_turned_off_or_already_set():
    assert not hugepages.needs_restart(_clean(VERTEX_HUGEPAGES="0"))
    assert not hugepages.needs_restart(_clean(GLIBC_TUNABLES="glibc.malloc.hugetlb=1"))
    assert not hugepages.needs_restart(_clean(GLIBC_TUNABLES="glibc.malloc.hugetlb=0"))  # the user's choice


def test_the_tunable_is_added_to_the_user_s_own():
    env = hugepages.hugepage_environment(_clean(GLIBC_TUNABLES="glibc.malloc.arena_max=2"))
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert hugepages.hugepage_environment(_clean())["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert not hugepages.needs_restart(env)  # a restarted process never restarts again


def test_entry_point_restarts_once_with_the_same_arguments(tmp_path):
    script = tmp_path / "entry.py"
    script.write_text("import os, sys\n"
                      "from vertex_jax.hugepages import restart_with_hugepages\n"
                      "print('start', os.getpid(), flush=True)\n"
                      "restart_with_hugepages()\n"
                      "print(os.getpid(), sys.argv[1:], os.environ.get('GLIBC_TUNABLES', ''))\n")
    env = _clean()
    proc = subprocess.run([sys.executable, str(script), "--a", "b c"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    restarted = hugepages.needs_restart(env)
    pid, rest = lines[-1].split(" ", 1)
    assert lines[:-1] == [f"start {pid}"] * (2 if restarted else 1)  # the same process, re-executed
    assert rest.rstrip() == f"['--a', 'b c'] {'glibc.malloc.hugetlb=1' if restarted else ''}".rstrip()

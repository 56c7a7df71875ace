"""Faults beyond a killed process: damaged cache shards and checkpoints, a full disk,
orphaned worker processes. Everything on real files, mounts and processes. (A lost rank and
damaged checkpoints at the restart: tests/test_launch.py, the Kubernetes Job's pods.)"""

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from test_train import REPO
from vertex_jax.data.cache import COMPLETE, CacheDamagedError, build_cache
from vertex_jax.data.clinical import ClinicalStats
from vertex_jax.data.io import ImageReadError
from vertex_jax.data.manifest import load_manifest
from vertex_jax.data.pipeline import eval_dataset
from vertex_jax.data.preprocess import PreprocessConfig
from vertex_jax.train.checkpoint import CheckpointSaveError, Checkpoints

CFG = PreprocessConfig(canvas=(256, 128))  # records of ~25 KB: a flip lands inside one


def flip(path: Path, offset: int, n: int = 64) -> None:
    """Invert ``n`` bytes of a file at ``offset`` (``offset < 0``: from the middle)."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset < 0 else offset
    data[offset:offset + n] = bytes(b ^ 0xFF for b in data[offset:offset + n])
    path.write_bytes(bytes(data))


def records(cache, df) -> np.ndarray:
    stats = ClinicalStats.fit(df)
    ds = eval_dataset(cache, df, tasks=["pvf"], stats=stats, global_batch=4)
    return np.concatenate([b["image"] for b in ds])


# --- damaged cache shards ---------------------------------------------------------------

def test_damaged_truncated_or_missing_shards_are_rebuilt_when_opened(png_cohort, tmp_path, caplog):
    df = load_manifest(png_cohort)
    cache = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=5, progress=False)
    root, clean = cache.root, records(cache, df)
    original = {p.name: p.read_bytes() for p in root.glob("shard-*")}
    kept = (root / "shard-00000.array_record").stat().st_mtime_ns
    done = (root / COMPLETE).stat().st_mtime_ns
    flip(root / "shard-00001.array_record", -1)
    with open(root / "shard-00002.array_record", "r+b") as f:
        f.truncate(1000)
    (root / "shard-00003.array_record").unlink()
    (root / "shard-00004.json").unlink()
    with caplog.at_level(logging.WARNING):
        again = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=64, progress=False)
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert "shard-00001.array_record is damaged: its SHA-256 differs" in warned
    assert "shard-00002.array_record is truncated" in warned
    assert "shard-00003.array_record is missing" in warned
    assert "shard-00004.array_record is missing its record list shard-00004.json" in warned
    assert "shard-00000" not in warned
    # Rebuilt with the cache's own shard size (not the 64 asked for): the same files again.
    assert {p.name: p.read_bytes() for p in root.glob("shard-*")} == original
    assert (root / "shard-00000.array_record").stat().st_mtime_ns == kept
    assert (root / COMPLETE).stat().st_mtime_ns != done
    np.testing.assert_array_equal(records(again, df), clean)


def test_a_damaged_cache_stays_unfinished_until_its_shards_are_rebuilt(png_cohort, tmp_path):
    df = load_manifest(png_cohort)
    cache = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=5, progress=False)
    flip(cache.root / "shard-00001.array_record", -1)
    image, st = Path(df["path"][6]), os.stat(df["path"][6])
    image.write_bytes(bytes(st.st_size))  # unreadable now, same size and time: same fingerprint
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ImageReadError, match="img006"):
        build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=5, progress=False)
    assert not (cache.root / COMPLETE).exists()
    assert not (cache.root / "shard-00001.json").exists()


def test_damage_during_an_epoch_names_the_shard(png_cohort, tmp_path):
    df = load_manifest(png_cohort)
    cache = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=5, progress=False)
    clean = records(cache, df)
    ds = eval_dataset(cache, df, tasks=["pvf"], stats=ClinicalStats.fit(df), global_batch=4)
    flip(cache.root / "shard-00002.array_record", 1024)  # after the open-time check
    with pytest.raises(CacheDamagedError) as err:
        for _ in ds:
            pass
    message = str(err.value)
    assert str(cache.root / "shard-00002.array_record") in message and "re-run" in message
    rebuilt = build_cache(df, tmp_path / "cache", CFG, workers=1, shard_size=5, progress=False)
    np.testing.assert_array_equal(records(rebuilt, df), clean)


# --- full disk during a save ------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only; skipped where mounting is not permitted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_during_save_keeps_the_previous_checkpoint(small_disk):
    state = nnx.state(nnx.Linear(64, 32, rngs=nnx.Rngs(0)))
    first = np.asarray(state["kernel"][...])
    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    ckpt = Checkpoints(small_disk / "checkpoints", keep_latest=1, keep_best=1)
    save = lambda step: ckpt.save(step, state, iterator, {"step": step}, {}, {},  # noqa: E731
                                  {"val_auroc": step / 10})
    save(1)
    ckpt.wait()
    before = tree_digest(small_disk / "checkpoints" / "1")
    with open(small_disk / "filler", "wb") as f:
        f.write(bytes(shutil.disk_usage(small_disk).free - 64 * 1024))
    state["kernel"].set_value(jnp.ones((64, 32)))
    with pytest.raises(CheckpointSaveError) as err:
        save(2)  # written in the background: the failure surfaces here or at the next wait
        ckpt.wait()
    message = str(err.value)
    assert f"step 2 to {small_disk / 'checkpoints'} failed" in message
    assert "No space left on device" in message and "free of 4.0 MiB" in message
    assert "step 1 is untouched" in message
    ckpt.close()
    assert tree_digest(small_disk / "checkpoints" / "1") == before
    (small_disk / "filler").unlink()
    reopened = Checkpoints(small_disk / "checkpoints", keep_latest=1, keep_best=1)
    assert reopened.manager.all_steps() == [1]  # the half-written step is no checkpoint
    step, restored, progress = reopened.restore_latest(state, iterator)
    assert step == 1 and progress == {"step": 1}
    np.testing.assert_array_equal(np.asarray(restored["kernel"][...]), first)
    reopened.close()
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == ["1"]


# --- orphaned worker processes ----------------------------------------------------------

def _proc_stat(pid: int) -> tuple[int, str, str] | None:
    """(ppid, state, start time) of a live process, None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else (int(fields[1]), fields[0], fields[19])


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live descendant of ``root``."""
    table = {int(p.name): s for p in Path("/proc").iterdir() if p.name.isdigit()
             if (s := _proc_stat(int(p.name)))}
    found, frontier = {}, {root}
    while frontier:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier}
        found.update({pid: table[pid][2] for pid in children})
        frontier = children - {root}
    return found


WORKLOADS = {  # forever: fresh outputs each round, so worker pools keep coming and going
    "cache": ("import itertools, sys; sys.path.insert(0, 'tests')\n"
              "from conftest import write_png_cohort\n"
              "from vertex_jax.data.cache import build_cache\n"
              "from vertex_jax.data.preprocess import PreprocessConfig\n"
              "from pathlib import Path\n"
              "if __name__ == '__main__':\n"
              "    root = Path(sys.argv[1]); df = write_png_cohort(root, 8)\n"
              "    df['path'] = [str(root / p) for p in df['path']]\n"
              "    for i in itertools.count():\n"
              "        build_cache(df, root / f'c{i}', PreprocessConfig(canvas=(64, 32)), workers=2,\n"
              "                    shard_size=1, progress=False)\n"),
    "cohort": ("import itertools, sys\n"
               "from vertex_jax.synthetic.cohort import generate_cohort\n"
               "if __name__ == '__main__':\n"
               "    for i in itertools.count():\n"
               "        generate_cohort(f'{sys.argv[1]}/c{i}', num_patients=4, scale=0.1, workers=2)\n"),
}


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_kill9_leaves_no_worker_processes(workload, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(WORKLOADS[workload])
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children = {}
    try:
        deadline = time.time() + 120
        while len(children) < 3:  # two pool workers and the resource tracker (+ forkserver)
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, f"workers never started: {children}"
            time.sleep(0.1)
            children = _descendants(proc.pid)
        proc.send_signal(signal.SIGSTOP)  # no new workers from here on: list them, then kill
        time.sleep(0.5)
        children = _descendants(proc.pid)
        proc.kill()
        proc.communicate()
        deadline = time.time() + 10
        while (alive := {p: t for p, t in children.items()
                         if (s := _proc_stat(p)) and s[2] == t}) and time.time() < deadline:
            time.sleep(0.2)
        names = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
                 for p in alive}
        assert not alive, f"processes outlived the killed run: {names}"
    finally:
        proc.kill()
        for pid, start in children.items():
            if (s := _proc_stat(pid)) and s[2] == start:
                os.kill(pid, signal.SIGKILL)

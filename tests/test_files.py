"""The shared helpers: atomic file writes and config files by name."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vertex_jax import files
from vertex_jax.config_files import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_writes_replace_whole_files_and_leave_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    files.write_text(target, "old")
    files.write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with files.atomic_open(target, "w") as f:
            f.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    with files.atomic_path(tmp_path / "skipped") as tmp:  # the block drops its temporary file
        tmp.write_text("x")
        tmp.unlink()
    assert not (tmp_path / "skipped").exists()
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the umask decides, as for open()


def test_load_config_follows_the_config_flag_rule(tmp_path, monkeypatch):
    assert load_config("configs/xray.py").model.variant == "b4"
    assert load_config("configs/xray.py:tiny").data.canvas == (64, 32)
    monkeypatch.chdir(tmp_path)  # not in the checkout: found relative to it
    vfa = load_config("configs/vfa.py:demo")
    assert vfa.data.domain == "vfa" and vfa.model.variant == "tiny"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "xray.py").write_text("def get_config(arg=''):\n    return {'arg': arg}\n")
    assert load_config("configs/xray.py:x") == {"arg": "x"}  # the current directory first
    assert load_config(tmp_path / "configs" / "xray.py", "a:b") == {"arg": "a:b"}
    with pytest.raises(FileNotFoundError, match="missing.py"):
        load_config("configs/missing.py")


def test_vfa_config_loads_through_config_flags():
    code = ("from absl import app\nfrom ml_collections import config_flags\n"
            "c = config_flags.DEFINE_config_file('config')\n"
            "app.run(lambda _: print(c.value.data.domain, c.value.data.canvas))")
    proc = subprocess.run([sys.executable, "-c", code, "--config=configs/vfa.py:demo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["vfa", "(384,", "192)"]

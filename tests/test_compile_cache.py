"""The persistent compilation cache: on by default, off by VERTEX_COMPILE_CACHE=off, and a
second process loads what the first compiled."""

import os
import subprocess
import sys
from pathlib import Path

from vertex_jax.compile_cache import ENV, cache_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import jax, jax.numpy as jnp
from vertex_jax.compile_cache import enable_compilation_cache
print("cache:", enable_compilation_cache(min_compile_s=0))
print(jax.jit(lambda x: jnp.sin(x) @ x.T + 1)(jnp.ones((8, 8))).sum())
"""


def run(env_value: str | None, home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"XDG_CACHE_HOME": str(home),
                                                            "JAX_PLATFORMS": "cpu"}
    if env_value is not None:
        env[ENV] = env_value
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_on_by_default_in_the_user_cache_and_reused_by_a_second_process(tmp_path):
    out = run(None, tmp_path)
    default = tmp_path / "vertex_jax" / "jax"
    assert f"cache: {default}" in out
    entries = sorted(p.name for p in default.iterdir() if p.name.startswith("jit_"))
    assert entries, "the first process wrote no executable"
    run(None, tmp_path)  # a hit: nothing new to write
    assert sorted(p.name for p in default.iterdir() if p.name.startswith("jit_")) == entries


def test_a_path_moves_it_and_off_turns_it_off(tmp_path, monkeypatch):
    chosen = tmp_path / "shared" / "xla"
    assert f"cache: {chosen}" in run(str(chosen), tmp_path / "home")
    assert any(p.name.startswith("jit_") for p in chosen.iterdir())
    for off in ("off", "0", "false"):
        assert "cache: None" in run(off, tmp_path / f"home-{off}")
        assert not (tmp_path / f"home-{off}" / "vertex_jax").exists()
    monkeypatch.setenv(ENV, "OFF")
    assert cache_dir() is None
    monkeypatch.delenv(ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "vertex_jax" / "jax"

"""The persistent compilation cache: on by default, off by VERTEX_COMPILE_CACHE=off, and a
second process loads what the first compiled."""

import os
import subprocess
import sys
from pathlib import Path

from vertex_jax.compile_cache import AUTOTUNE_DIR, ENV, cache_dir, seed_autotune_results, shipped_autotune_results

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


def _results(folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"algorithm {{ algo_id: {len(name)} }}\n")  # an AutotuneResult


def test_autotuning_results_are_seeded_whole_and_never_over_a_result_already_there(tmp_path):
    source, cache = tmp_path / "results", tmp_path / "cache"
    _results(source, ["a.textproto", "sub/b.textproto", "tmp/half.textproto", "notes.txt"])
    target = cache / AUTOTUNE_DIR
    _results(target, ["a.textproto"])
    (target / "a.textproto").write_text("mine")
    assert seed_autotune_results(source, cache) == 1  # b; a is kept, tmp/ and notes are not results
    assert (target / "a.textproto").read_text() == "mine"
    assert (target / "sub/b.textproto").read_text() == (source / "sub/b.textproto").read_text()
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "a.textproto", "sub/b.textproto"]  # no temporary file left behind
    assert seed_autotune_results(source, cache) == 0
    assert seed_autotune_results(tmp_path / "nothing", cache) == 0


SEEDING = """
import sys
from pathlib import Path
import vertex_jax.compile_cache as cc
cc.SHIPPED = Path(sys.argv[1])
print("cache:", cc.enable_compilation_cache())
"""


def test_the_shipped_results_of_the_installed_jaxlib_are_seeded_when_the_cache_is_on(tmp_path):
    import jaxlib

    shipped = tmp_path / "shipped"
    _results(shipped, [f"jaxlib-{jaxlib.__version__}/mine.textproto", "jaxlib-0.0.1/other.textproto"])
    assert shipped_autotune_results(shipped) == shipped / f"jaxlib-{jaxlib.__version__}"
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"JAX_PLATFORMS": "cpu"}
    for value, home in ((None, tmp_path / "home"), ("off", tmp_path / "home-off")):
        proc = subprocess.run([sys.executable, "-c", SEEDING, str(shipped)], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env=env | {"XDG_CACHE_HOME": str(home)}
                              | ({ENV: value} if value else {}))
        assert proc.returncode == 0, proc.stderr[-3000:]
    seeded = tmp_path / "home" / "vertex_jax" / "jax" / AUTOTUNE_DIR
    assert [p.name for p in seeded.iterdir()] == ["mine.textproto"]  # this jaxlib's only
    assert not (tmp_path / "home-off").exists()

"""The persistent compilation cache: on by default, off by VERTEX_COMPILE_CACHE=off, and a
second process loads what the first compiled."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vertex_jax.bench.gpu_target import cuda_plugin_installed
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


CONVOLUTION = """
import sys
from pathlib import Path
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import vertex_jax.compile_cache as cc
from vertex_jax.bench.gpu_target import target_mesh
cc.SHIPPED = Path(sys.argv[2])
cc.enable_compilation_cache(sys.argv[1], min_compile_s=1e9)  # no executable kept: XLA compiles each time
on = NamedSharding(target_mesh("h200"), PartitionSpec())
x = jax.ShapeDtypeStruct((8, 64, 64, 32), jnp.bfloat16, sharding=on)
w = jax.ShapeDtypeStruct((3, 3, 32, 64), jnp.bfloat16, sharding=on)
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC")))
print(conv.lower(x, w).compile().as_text())
"""


@pytest.mark.skipif(not cuda_plugin_installed(),
                    reason="compiling for a described GPU needs JAX's CUDA plugin (pip install 'vertex_jax[gpu]')")
def test_a_described_h200_compiles_its_convolution_with_the_shipped_algorithm(tmp_path):
    """End to end without a GPU: XLA:GPU, compiling for a described H200, looks the
    convolution's algorithm up in the cache's autotuning folder (its log names the file);
    a result shipped under that name for this jaxlib is copied there when the cache is
    enabled, and the compiled program calls cuDNN with that algorithm."""
    import jaxlib

    env = {k: v for k, v in os.environ.items() if k not in (ENV, "JAX_PLATFORMS")} | {
        "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "config_assigner=1,autotuner_cache=1"}
    shipped = tmp_path / "shipped"

    def compile_in(cache: Path) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-c", CONVOLUTION, str(cache), str(shipped)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    cold = compile_in(tmp_path / "cold")
    assert '"algorithm":{"algo_id":"-1"' in cold.stdout  # nothing autotuned or cached: cuDNN's heuristic
    looked_up = re.search(r"Getting config for HLO: %cudnn-conv[^\n]*\n[^\n]*"
                          r"Autotune result file not found: (\S+\.textproto)", cold.stderr)
    assert looked_up, cold.stderr[-3000:]
    file = Path(looked_up.group(1))
    assert file.parent == tmp_path / "cold" / AUTOTUNE_DIR
    result = shipped / f"jaxlib-{jaxlib.__version__}" / file.name
    result.parent.mkdir(parents=True)
    result.write_text("algorithm {\n  algo_id: 7\n  math_type: TENSOR_OP_MATH\n}\n")  # an AutotuneResult
    seeded = compile_in(tmp_path / "fresh")
    assert '"algorithm":{"algo_id":"7","math_type":"TENSOR_OP_MATH"' in seeded.stdout, seeded.stderr[-3000:]

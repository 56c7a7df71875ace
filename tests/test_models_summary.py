"""Model summary: parameters per stage, GMACs, activation memory, and the CLI."""

from __future__ import annotations

import jax.numpy as jnp
import pytest
from flax import nnx

from vertex_jax.models import EfficientNet
from vertex_jax.models.__main__ import main
from vertex_jax.models.summary import activation_bytes_per_image, analytic_macs, stage_rows, xla_macs


def _abstract(variant: str, **kwargs) -> EfficientNet:
    return nnx.eval_shape(lambda: EfficientNet(variant, **kwargs, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def b4() -> EfficientNet:
    return _abstract("b4")


def test_b4_gmacs_match_published_figures(b4):
    assert analytic_macs(b4, 380, 380) / 1e9 == pytest.approx(4.39, abs=0.01)
    assert analytic_macs(b4, 1024, 512) / 1e9 == pytest.approx(15.6, abs=0.1)


def test_stage_table_adds_up(b4):
    rows = stage_rows(b4, 1024, 512)
    assert [r.name for r in rows] == ["stem"] + [f"stage{i}" for i in range(1, 8)] + ["head", "classifier"]
    assert sum(r.params for r in rows) == 19_341_616
    assert [(r.height, r.width) for r in rows[:-1]] == [
        (512, 256), (512, 256), (256, 128), (128, 64), (64, 32), (64, 32), (32, 16), (32, 16), (32, 16)]
    assert rows[6].blocks == 8 and rows[6].channels == 272


def test_xla_cost_analysis_agrees_with_the_count():
    model = _abstract("b0")
    ratio = xla_macs(model, 96, 64) / analytic_macs(model, 96, 64)
    assert 0.9 < ratio < 1.2  # XLA skips padded taps but adds elementwise work
    from vertex_jax.auto_setting import assume_accelerator
    convs = _abstract("b0", depthwise="conv")
    on_cpu = xla_macs(convs, 96, 64)
    assume_accelerator(True)  # a GPU host: se_pool=auto would recompute the pool
    try:
        assert xla_macs(convs, 96, 64) == on_cpu
    finally:
        assume_accelerator(None)


def test_activation_memory_scales_with_dtype_remat_and_recompute():
    f32 = activation_bytes_per_image(_abstract("b0", dtype=jnp.float32), 64, 64)
    bf16 = activation_bytes_per_image(_abstract("b0", dtype=jnp.bfloat16), 64, 64)
    remat = activation_bytes_per_image(_abstract("b0", dtype=jnp.bfloat16, remat=True), 64, 64)
    recompute = activation_bytes_per_image(_abstract("b0", dtype=jnp.bfloat16, depthwise="conv",
                                                     recompute="elementwise"), 64, 64)
    kept = activation_bytes_per_image(_abstract("b0", dtype=jnp.bfloat16, depthwise="conv"), 64, 64)
    assert 0.45 < bf16 / f32 < 0.55
    assert remat < 0.2 * bf16
    assert remat < recompute < 0.6 * kept


def test_cli_prints_the_summary(capsys):
    main(["--variant", "b0", "--height", "96", "--width", "64", "--dtype", "float32"])
    out = capsys.readouterr().out
    assert "EfficientNet-b0: input 96x64x3" in out
    assert "5,288,548" in out and "stage7" in out
    assert "GMACs (XLA cost analysis" in out and "activation memory per training image" in out
    main(["--variant", "b0", "--height", "96", "--width", "64", "--no-xla", "--recompute", "elementwise"])
    assert "remat False, recompute elementwise (stages 0-6)" in capsys.readouterr().out
    main(["--variant", "b0", "--height", "96", "--width", "64", "--no-xla", "--recompute", "elementwise",
          "--recompute-stages", "3"])
    assert "recompute elementwise (stages 0-2)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--variant", "b4", "--height", "16"])

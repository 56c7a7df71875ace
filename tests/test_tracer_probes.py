"""The cheap ``sharding`` probe on tracers (vertex_jax.tracer_probes): the same answer to
``getattr``/``hasattr``, without walking the trace; and JAX's own probe still walks it (the
day this fails, JAX has fixed it and the module can go)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src import core
from jax._src.interpreters import partial_eval as pe

import vertex_jax.models  # noqa: F401 - installs the probe
from vertex_jax import tracer_probes


@pytest.fixture
def origin_walks(monkeypatch):
    """Counts the walks JAX makes to say where a tracer came from."""
    calls = []
    original = pe.DynamicJaxprTracer._origin_msg

    def counted(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(pe.DynamicJaxprTracer, "_origin_msg", counted)
    return calls


def _probe(x):
    y = x
    for _ in range(50):
        y = y * 2.0 + 1.0
    return getattr(y, "sharding", None), hasattr(y, "sharding"), y


def test_the_probe_answers_as_before_without_walking_the_trace(origin_walks):
    seen = []
    jax.jit(lambda x: seen.append(_probe(x)[:2]) or x).trace(jnp.ones(3))
    assert seen == [(None, False)] and origin_walks == [] and tracer_probes.active() == "cheap"
    with pytest.raises(AttributeError, match="'sharding' attribute is not available on traced array with shape"):
        jax.jit(lambda x: _probe(x)[2].sharding).trace(jnp.ones(3))
    # concrete arrays keep theirs
    assert jnp.ones(3).sharding.is_fully_replicated
    # building a model abstractly probes every value flax assigns, and walks nothing
    nnx.eval_shape(lambda: nnx.Linear(4, 4, rngs=nnx.Rngs(0)))
    assert origin_walks == []


def test_jax_s_own_probe_still_walks_the_trace(origin_walks, monkeypatch):
    monkeypatch.setattr(core.Tracer, "sharding", tracer_probes.JAX_SHARDING)
    assert tracer_probes.active() == "jax"
    jax.jit(lambda x: _probe(x)[2]).trace(jnp.ones(3))
    assert origin_walks, "JAX's Tracer.sharding no longer walks the trace: vertex_jax.tracer_probes can go"


@pytest.mark.parametrize("choice,jax_s", [("jax", True), ("cheap", False), ("JAX!", False)])
def test_the_environment_can_keep_jax_s_probe(choice, jax_s):
    code = ("import vertex_jax.models, vertex_jax.tracer_probes as t; from jax._src import core; "
            "print(core.Tracer.__dict__['sharding'] is t.JAX_SHARDING)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=os.environ | {"VERTEX_TRACER_PROBE": choice})
    assert out.returncode == 0 and out.stdout.strip() == str(jax_s), out.stderr[-2000:]
    assert ("is neither 'cheap' nor 'jax': using 'cheap'" in out.stderr) == (choice == "JAX!")

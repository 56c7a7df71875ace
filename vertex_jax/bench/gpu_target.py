"""A GPU that is not here, as XLA:GPU compiles for it: ``bench --what=compile --target=h200``.

XLA compiles for a described GPU without one (deviceless ahead-of-time compilation through
``jax.experimental.topologies``; needs the CUDA plugin, ``pip install 'vertex_jax[gpu]'``,
but no driver). Nothing runs and nothing is autotuned (convolutions take cuDNN's
heuristic choice), so the compiled program shows what XLA:GPU makes of a setting -- its
kernels, its compile work without autotuning -- on any machine. The descriptions are the
cards' public figures; fusion decisions depend on them only through limits such as
shared memory per block.
"""

from __future__ import annotations

import importlib.util
import os

from jax.sharding import Mesh

from vertex_jax.mesh import DATA

__all__ = ["TARGETS", "cuda_plugin_installed", "target_mesh"]

_HOPPER = """
gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
runtime_version {{ major: 12 minor: 9 }}
device_description_str: "{name}"
"""

# Name -> XLA's GpuTargetConfig (text proto) of the card.
TARGETS: dict[str, str] = {
    "h100": _HOPPER.format(name="NVIDIA H100 80GB HBM3", bandwidth=3_352_320_000_000, memory=85_520_809_984),
    "h200": _HOPPER.format(name="NVIDIA H200", bandwidth=4_800_000_000_000, memory=150_754_820_096),
}


def cuda_plugin_installed() -> bool:
    """Whether JAX's CUDA plugin (12 or 13) is installed: compiling for a described GPU needs it."""
    if importlib.util.find_spec("jax_plugins") is None:
        return False
    return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") for v in (12, 13))


def target_mesh(name: str) -> Mesh:
    """A one-device mesh of the described GPU ``name`` (a key of :data:`TARGETS`): arrays
    sharded on it are abstract (``jax.ShapeDtypeStruct``), and programs compiled for it
    never run here. Call it before this process touches a backend."""
    if name not in TARGETS:
        raise ValueError(f"target must be one of {sorted(TARGETS)}, got {name!r}")
    # Without a driver the CUDA plugin's version check fails; the compiler needs no driver.
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    from jax.experimental import topologies
    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=TARGETS[name], topology="1x1x1")
    except (NotImplementedError, RuntimeError) as e:
        raise RuntimeError(f"compiling for {name} needs JAX's CUDA plugin (pip install 'vertex_jax[gpu]'): {e}") from e
    return topologies.make_mesh(topology, (1,), (DATA,))


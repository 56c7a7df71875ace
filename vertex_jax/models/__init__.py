"""Models: EfficientNet B0-B7 (Flax NNX), the VERTE-X fusion network, pretrained-weight import."""

from vertex_jax import tracer_probes

tracer_probes.install()  # before any model is traced (vertex_jax.tracer_probes)

from vertex_jax.models.efficientnet import VARIANTS, EfficientNet, block_specs, normalize_input, to_unit_float  # noqa: E402
from vertex_jax.models.vertex import VertexNet  # noqa: E402
from vertex_jax.models.weight_maps import ImportReport, WeightImportError  # noqa: E402
from vertex_jax.models.weights import build_pretrained, load_pretrained  # noqa: E402

__all__ = [
    "VARIANTS", "EfficientNet", "block_specs", "normalize_input", "to_unit_float", "VertexNet",
    "ImportReport", "WeightImportError", "build_pretrained", "load_pretrained",
]

"""Models: EfficientNet B0-B7 (Flax NNX), the VERTE-X fusion network, pretrained-weight import."""

from vertex_jax.models.efficientnet import VARIANTS, EfficientNet, block_specs, normalize_input
from vertex_jax.models.vertex import TASKS, VertexNet
from vertex_jax.models.weights import ImportReport, WeightImportError, build_pretrained, load_pretrained

__all__ = [
    "VARIANTS", "EfficientNet", "block_specs", "normalize_input", "TASKS", "VertexNet",
    "ImportReport", "WeightImportError", "build_pretrained", "load_pretrained",
]

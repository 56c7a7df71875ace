"""Where a score comes from: saliency maps (``saliency``), localisation metrics and per-image
findings (``localization``), overlays (``overlay``) and the review page (``review``).

Importing this package loads no JAX (``predict --backend onnx`` names the methods)."""

METHODS = ("gradcam", "hirescam", "layercam", "evidence")
# HiResCAM points best for both heads on the demo, the evidence head's own map included; its
# layer per head: saliency.default_layers (README, "Localisation").
DEFAULT_METHOD = "hirescam"

"""Where a score comes from: saliency maps (``saliency``), localisation metrics and per-image
findings (``localization``), overlays (``overlay``) and the review page (``review``).

Importing this package loads no JAX (``predict --backend onnx`` names the methods)."""

METHODS = ("gradcam", "hirescam", "layercam", "evidence")
# HiResCAM at stage 1 points best for both heads on the demo, the evidence head's own map
# included (README, "Localisation").
DEFAULT_METHOD = "hirescam"

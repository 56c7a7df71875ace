"""Export trained models for serving (ONNX, TF SavedModel): ``python -m vertex_jax.export``."""

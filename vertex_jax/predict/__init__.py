"""Batch prediction (python -m vertex_jax.predict) with the JAX or the ONNX backend."""

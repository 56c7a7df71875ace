"""Scores over HTTP: ``python -m vertex_jax.serve --model EXPORT_DIR`` (FastAPI + uvicorn).

An exported ONNX model served by onnxruntime, without JAX. Each upload goes through
``predict``'s own input and scoring code (:mod:`vertex_jax.predict.inputs`,
:mod:`vertex_jax.predict.run`), so a score equals what ``predict --backend onnx`` writes
for the same file. :mod:`.app` holds the endpoints, :mod:`.upload` the limits and the
checks of what is sent, :mod:`.scoring` the model and the scoring of one file.
"""

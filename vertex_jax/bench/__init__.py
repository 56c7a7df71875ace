"""Every throughput benchmark of the project, under one command.

    python -m vertex_jax.bench --config=configs/xray.py [--what train|eval|loop|compile|input|export|all]
        [--batch 16,32] [--dtype float32,bfloat16] [--remat false,true]
        [--sweep model.depthwise=conv,shifts] [--steps 10] [--repeats 3] [--json out.json]
        [--peer torch [--peer_flags=] [--peer_flags=--compile]]

``--what train|eval`` (default train): random batches of the configured shape (no data
needed), every device of the mesh, the step functions training uses. Each sweep point
(cartesian product of the lists) runs in a fresh process (``--noisolate`` to share one)
and reports compile time, the median step time, images/s, analytic model FLOPs and XLA's
cost-analysis FLOPs and bytes per step, achieved TFLOP/s and GB/s per device, peak
device memory (null on CPU) and XLA's memory plan; a table is printed and ``--json``
keeps the records with the device, library versions and the exact command line.
``--what compile`` compiles the training step once from a cold cache and runs nothing
(:mod:`.compile_time`: seconds in Python and in XLA, program sizes). ``--what input`` runs
the input-pipeline benchmark (:mod:`.input`, extra flags through
``--input_flags``); ``--what export`` the exported ONNX model on onnxruntime against JAX
(:mod:`.export`); ``all`` is train, eval and input. ``--peer torch`` trains the same
network with PyTorch (``benchmarks/torch_peer.py``) at each training point and prints
the ratio.

Modules: :mod:`.measure` (one train/eval point), :mod:`.compile_time` (one cold compile), :mod:`.flops` (analytic FLOP count of a
jaxpr), :mod:`.record` (result format, shared with the peer), :mod:`.peer` (peer
launcher), :mod:`.input` (raw file -> canvas -> cache -> batch, CPU augmentation;
``python -m vertex_jax.bench.input``), :mod:`.export` (ONNX / JAX CPU inference;
``python -m vertex_jax.bench.export``), :mod:`.serve_load` (the HTTP service under load, no
JAX; ``python -m vertex_jax.bench.serve_load --model EXPORT_DIR``). Peer scripts, notes and result files live in
``benchmarks/`` at the top of the checkout.
"""

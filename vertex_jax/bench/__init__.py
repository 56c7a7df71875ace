"""Throughput of the jitted training / evaluation step on this machine's devices.

    python -m vertex_jax.bench --config=configs/xray.py [--what train|eval|input|all]
        [--batch 16,32] [--dtype float32,bfloat16] [--remat false,true]
        [--sweep model.depthwise=conv,shifts] [--steps 10] [--repeats 3] [--json out.json]
        [--peer torch [--peer_flags=] [--peer_flags=--compile]]

Random batches of the configured shape (no data needed), every device of the mesh, the
step functions training uses. Each sweep point (cartesian product of the lists) runs in a
fresh process (``--noisolate`` to share one) and reports compile time, the median step
time, images/s, analytic model FLOPs and XLA's cost-analysis FLOPs and bytes per step,
achieved TFLOP/s and GB/s per device, peak device memory (null on CPU) and XLA's memory
plan; a table is printed and ``--json`` keeps the records with the device, library
versions and the exact command line. ``--what input`` runs the input-pipeline benchmark
(:mod:`vertex_jax.data.bench`); ``--peer torch`` trains the same network with PyTorch
(``benchmarks/torch_peer.py``) at each training point and prints the ratio.

Modules: :mod:`.measure` (one point), :mod:`.flops` (analytic FLOP count of a jaxpr),
:mod:`.record` (result format, shared with the peer), :mod:`.peer` (peer launcher).
"""

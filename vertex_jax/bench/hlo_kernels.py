"""The kernels of a compiled XLA program, read from its text (``compiled.as_text()``).

A kernel is an instruction of the entry computation that runs something: a fusion, a
library call (cuDNN convolution, cuBLAS matrix product), a copy, a loop. For each, the
bytes it reads and writes are estimated from the shapes in the text: its operands and
results, except that an operand the fused computation only slices counts as its slices
(a weight cut out of a packed buffer), and a library call's scratch buffer does not
count. XLA's own cost analysis is empty for a GPU that is only described
(:mod:`vertex_jax.bench.gpu_target`), so this estimate is what compares settings'
memory traffic there; it counts each operand once, as if nothing were cached.

Library calls with the same target, shapes and window are one problem for XLA's
autotuner, which times each distinct one once per compile: ``library_calls`` counts both.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any

__all__ = ["Kernel", "entry_kernels", "kernel_summary", "op_kind", "shape_bytes"]

# Entry-computation instructions that launch no work of their own.
_NOT_KERNELS = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
                "partition-id", "replica-id", "opt-barrier")
_OPCODE = re.compile(r"(?:^|[\s)}\]])([a-z][a-z0-9-]*)\(")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")
_NAME = re.compile(r"%[\w.\-]+")
_ITEM_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1,
               "f8e5m2fnuz": 1, "f8e4m3fnuz": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}  # 4-bit: a byte (upper bound)
_LIBRARIES = ("__cudnn$", "__cublas")  # custom calls that XLA's autotuner times
_SCRATCH = ("s8", "u8")  # a library call's workspace: the last element of its result tuple
_LIBRARY_KEY = re.compile(r"(window=\{[^}]*\}|dim_labels=\S+|feature_group_count=\d+)")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One kernel: its instruction name, what it is (a fusion's kind and name stem, a
    library call's target, or the opcode), estimated bytes read and written, and, for a
    library call, what makes it a distinct autotuning problem."""

    name: str
    kind: str
    bytes_in: int
    bytes_out: int
    library_key: str = ""


def shape_bytes(shape: str, *, drop_scratch: bool = False) -> int:
    """Bytes of the arrays in an HLO shape such as ``(bf16[32,64]{1,0}, u8[0]{0})``."""
    arrays = _ARRAY.findall(shape)
    if drop_scratch and len(arrays) > 1 and arrays[-1][0] in _SCRATCH:
        arrays = arrays[:-1]
    total = 0
    for dtype, dims in arrays:
        count = 1
        for d in filter(None, dims.split(",")):
            count *= int(d)
        total += count * _ITEM_BYTES.get(dtype, 0)
    return total


def op_kind(name: str) -> str:
    """``%loop_multiply_fusion.12`` (or ``.12.0``) -> ``loop_multiply_fusion``."""
    return re.sub(r"(?:[._]\d+)+$", "", name.lstrip("%")) or name


def _operand_text(call: str) -> str:
    """The text inside the parentheses that open ``call``, nested ones included."""
    depth = 1
    for i, ch in enumerate(call):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return call[:i]
    return call


def _computations(text: str) -> dict[str, str]:
    """Name -> body of every computation in the module text."""
    bodies = {}
    for block in re.split(r"\n(?=%|ENTRY )", text):
        head = re.match(r"(?:ENTRY )?(%[\w.\-]+)", block)
        if head:
            bodies[head.group(1)] = block
    return bodies


def _sliced_parameters(body: str) -> dict[int, int]:
    """Parameter index -> bytes read, for each parameter of the fused computation ``body``
    that it only slices (the sum of the slices)."""
    params = dict(re.findall(r"(%[\w.\-]+) = [^\n]*\bparameter\((\d+)\)", body))
    uses: dict[str, list[str]] = {name: [] for name in params}
    for line in body.splitlines():
        if " parameter(" in line:
            continue
        for name in set(_NAME.findall(line)) & uses.keys():
            uses[name].append(line)
    return {int(index): sum(shape_bytes(line.split(" = ", 1)[1].split(" slice(", 1)[0]) for line in uses[name])
            for name, index in params.items()
            if uses[name] and all(" slice(" in line for line in uses[name])}


def entry_kernels(compiled_hlo: str) -> list[Kernel]:
    """The kernels of the entry computation, in program order."""
    bodies = _computations(compiled_hlo)
    entry = compiled_hlo.split("\nENTRY ", 1)[-1].split("\n}", 1)[0]
    shapes: dict[str, str] = {}
    kernels = []
    for line in entry.splitlines()[1:]:
        if " = " not in line:
            continue
        lhs, rhs = line.split(" = ", 1)
        opcode = _OPCODE.search(rhs)  # after the (maybe tuple) shape
        if not opcode:
            continue
        name, op, shape = lhs.split()[-1], opcode.group(1), rhs[:opcode.start()]
        shapes[name] = shape
        if op in _NOT_KERNELS or op.endswith("-done"):  # an async pair's work is its -start
            continue
        operands = _NAME.findall(_operand_text(rhs[opcode.end():]))
        called = re.search(r"calls=(%[\w.\-]+)", rhs)
        sliced = _sliced_parameters(bodies.get(called.group(1), "")) if called else {}
        bytes_in = sum(sliced[i] if i in sliced else shape_bytes(shapes.get(operand, ""))
                       for i, operand in enumerate(operands))
        library_key = ""
        if op == "fusion":
            kind = op_kind(name)
        elif op == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rhs)
            kind = target.group(1) if target else op
            if kind.startswith(_LIBRARIES):
                library_key = " ".join([kind, shape, *(shapes.get(o, "") for o in operands),
                                        *_LIBRARY_KEY.findall(rhs)])
        else:
            kind = op
        kernels.append(Kernel(name, kind, bytes_in, shape_bytes(shape, drop_scratch=op == "custom-call"),
                              library_key))
    return kernels


def kernel_summary(compiled_hlo: str) -> dict[str, Any]:
    """``kernels``: how many; ``kernel_bytes``: estimated bytes read + written by all of
    them; ``library_calls``: per library target, its calls and distinct problems;
    ``library_problems``: the distinct problems of all targets."""
    kernels = entry_kernels(compiled_hlo)
    calls, distinct = Counter(), {}
    for k in kernels:
        if k.library_key:
            calls[k.kind] += 1
            distinct.setdefault(k.kind, set()).add(k.library_key)
    return {"kernels": len(kernels), "kernel_bytes": sum(k.bytes_in + k.bytes_out for k in kernels),
            "library_calls": {t: {"calls": calls[t], "distinct": len(distinct[t])} for t in sorted(calls)},
            "library_problems": sum(len(keys) for keys in distinct.values())}

"""Export errors, and the optional packages each format needs."""

from __future__ import annotations

import importlib
from types import ModuleType

from vertex_jax.errors import UserError

# What to install for each optional module (see the README's export section).
INSTALL = {
    "jax2onnx": "jax2onnx==0.13.0 (the last release that accepts orbax-checkpoint 0.12)",
    "onnx": "onnx",
    "onnxruntime": "onnxruntime",
    "tensorflow": "tensorflow-cpu>=2.21 (or tensorflow)",
}


class ExportError(UserError, RuntimeError):
    """An export that cannot be done or did not verify; nothing was written to --out."""

    todo = "nothing was written; install what the message names, or look at the differences it reports"


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency or say exactly what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"{purpose} needs the '{module}' package: pip install "
                          f"{INSTALL.get(module, module)} ({e})") from e

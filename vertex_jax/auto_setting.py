"""Boolean settings that may be ``auto``: on for accelerators, off on CPUs.

Levers measured to win on a GPU and to cost on a CPU (where the test suite runs) default
to ``auto``. Strings as a command line gives them (``--config.pack_state=false``) are
understood.
"""

from __future__ import annotations

from typing import Any

import jax

from vertex_jax.errors import ConfigError

__all__ = ["auto_enabled", "on_accelerator", "assume_accelerator"]

_assumed: bool | None = None  # set by assume_accelerator: the target is not the local backend


def on_accelerator() -> bool:
    """Whether ``auto`` settings take their accelerator form: JAX's default backend is not
    the CPU, or :func:`assume_accelerator` said so (a program compiled for a GPU that is
    not here, ``bench --what=compile --target``)."""
    return _assumed if _assumed is not None else jax.default_backend() != "cpu"


def assume_accelerator(value: bool | None = True) -> None:
    """Make ``auto`` settings resolve as on an accelerator (True), a CPU (False) or the
    local backend (None) in this process."""
    global _assumed
    _assumed = value


def auto_enabled(value: Any, field: str) -> bool:
    """``value`` of the setting ``field``: true, false, or ``auto`` (true on accelerators,
    :func:`on_accelerator`)."""
    text = str(value).strip().lower()
    if text == "auto":
        return on_accelerator()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ConfigError(f"{field} must be true, false or auto, got {value!r}")

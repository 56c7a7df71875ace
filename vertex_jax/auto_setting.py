"""Boolean settings that may be ``auto``: on for accelerators, off on CPUs.

Levers measured to win on a GPU and to cost on a CPU (where the test suite runs) default
to ``auto``. Strings as a command line gives them (``--config.pack_state=false``) are
understood.
"""

from __future__ import annotations

from typing import Any

import jax

from vertex_jax.errors import ConfigError

__all__ = ["auto_enabled"]


def auto_enabled(value: Any, field: str) -> bool:
    """``value`` of the setting ``field``: true, false, or ``auto`` (true unless JAX's
    default backend is the CPU)."""
    text = str(value).strip().lower()
    if text == "auto":
        return jax.default_backend() != "cpu"
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ConfigError(f"{field} must be true, false or auto, got {value!r}")

"""Config files by name: ``load_config("configs/xray.py:demo")`` -> ``get_config("demo")``.

The same rule as ml_collections' ``--config`` flag (``config_flags``): the text after the
first ``:`` is passed to the file's ``get_config``; without one ``get_config()`` is
called with no argument. A relative path is looked up in the current directory first
(as ``config_flags`` does), then in this checkout (the folder holding ``vertex_jax/``),
so ``configs/xray.py`` works from anywhere in a source checkout.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import ml_collections

CHECKOUT = Path(__file__).resolve().parents[1]


def config_path(path: str | os.PathLike) -> Path:
    """The config file ``path`` names: as given, else relative to the checkout."""
    given = Path(path)
    if given.is_file():
        return given
    if not given.is_absolute() and (CHECKOUT / given).is_file():
        return CHECKOUT / given
    raise FileNotFoundError(f"config file {path} not found (looked in {Path.cwd()} and {CHECKOUT})")


def load_module(path: str | os.PathLike) -> ModuleType:
    """Execute a config file as a fresh module (not added to ``sys.modules``)."""
    resolved = config_path(path)
    name = "vertex_jax_config_" + re.sub(r"\W", "_", resolved.stem)
    spec = importlib.util.spec_from_file_location(name, resolved)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(spec: str | os.PathLike, variant: str | None = None) -> ml_collections.ConfigDict:
    """``path[:variant]`` -> the file's ``get_config(variant)``.

    With ``variant`` given, ``spec`` is the path alone (for paths that contain a colon).
    """
    if variant is None:
        path, sep, arg = os.fspath(spec).partition(":")
        args = (arg,) if sep else ()
    else:
        path, args = spec, (variant,)
    return load_module(path).get_config(*args)

"""Config files by name: ``load_config("xray:demo")`` -> ``get_config("demo")`` of ``xray.py``.

The same rule as ml_collections' ``--config`` flag (``config_flags``): the text after the
first ``:`` is passed to the file's ``get_config``; without one ``get_config()`` is
called with no argument. A config is named by

- a bare name (``xray``, ``vfa``): the configuration shipped inside the package
  (``vertex_jax/configs``, the checkout's ``configs/``), so it works from any directory
  after ``pip install``;
- a path: looked up in the current directory first (as ``config_flags`` does), then in
  this checkout, then by its file name among the shipped configs — so
  ``configs/xray.py`` works from anywhere too.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import ml_collections

from vertex_jax.errors import MissingInputError

CHECKOUT = Path(__file__).resolve().parents[1]
SHIPPED = Path(__file__).resolve().parent / "configs"  # links to the checkout's configs/


def shipped_names() -> list[str]:
    """Names of the configurations shipped with the package (``xray``, ``vfa``)."""
    return sorted(p.stem for p in SHIPPED.glob("*.py") if not p.stem.startswith("_"))


def config_path(path: str | os.PathLike) -> Path:
    """The config file ``path`` names: a shipped name, a path, or a shipped file's name."""
    given = Path(path)
    candidates = [given]
    if not given.is_absolute():
        candidates.append(CHECKOUT / given)
    if given.suffix == "" and given.parent == Path("."):
        candidates.append(SHIPPED / f"{given.name}.py")
    elif given.suffix == ".py":
        candidates.append(SHIPPED / given.name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingInputError(f"config file {path} not found (looked in {Path.cwd()} and {CHECKOUT}; "
                            f"shipped configs: {', '.join(shipped_names())})")


def resolve_config_argument(argv: list[str], flag: str = "config") -> list[str]:
    """``argv`` with ``--config=NAME[:variant]`` rewritten to the file's path.

    For absl's ``config_flags.DEFINE_config_file``, which only knows paths. Arguments
    that name no existing config are left as they are (the flag's parser reports them).
    """
    out, it = [], iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        if arg.startswith(f"--{flag}="):
            out.append(f"--{flag}=" + _resolved(arg.split("=", 1)[1]))
        elif arg == f"--{flag}" and i + 1 < len(argv):
            out += [arg, _resolved(argv[i + 1])]
            next(it, None)
        else:
            out.append(arg)
    return out


def _resolved(spec: str) -> str:
    path, sep, variant = spec.partition(":")
    try:
        return os.fspath(config_path(path)) + sep + variant
    except FileNotFoundError:
        return spec


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

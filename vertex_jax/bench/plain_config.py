"""Run configs without ml_collections, and a process without the packages a lent GPU
machine lacks.

The lent machine has no ml-collections, grain or pydicom, so the GPU check needs none of
them: ``configs/*.py`` run with :class:`PlainConfig` standing in for
``ml_collections.ConfigDict`` when ml_collections is missing (:func:`load_run_config`);
:func:`block_imports` makes those packages unimportable here, so the CPU tests exercise
the same path (``python -m vertex_jax.bench.gpu_check --dry``).
"""

from __future__ import annotations

import builtins
import copy
import importlib.abc
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

__all__ = ["CHECKOUT", "MISSING_ON_DEVICE", "PlainConfig", "plain_config", "load_run_config",
           "block_imports", "set_field", "point_config"]

CHECKOUT = Path(__file__).resolve().parents[2]
MISSING_ON_DEVICE = ("grain", "array_record", "ml_collections", "pydicom", "tensorboardX")


class PlainConfig(dict):
    """A stand-in for ``ml_collections.ConfigDict``: a dict whose (nested) fields are
    also attributes, enough for ``configs/*.py`` and the code that reads a run config."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, PlainConfig(value) if isinstance(value, dict)
                            and not isinstance(value, PlainConfig) else value)

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __deepcopy__(self, memo: dict) -> "PlainConfig":
        return PlainConfig({k: copy.deepcopy(v, memo) for k, v in self.items()})

    def copy_and_resolve_references(self) -> "PlainConfig":
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, PlainConfig) else v for k, v in self.items()}


def plain_config(spec: str) -> PlainConfig:
    """``path[:variant]``'s ``get_config`` run with :class:`PlainConfig` standing in for
    ``ml_collections.ConfigDict`` (the file's ``import ml_collections`` gets the stand-in)."""
    path, sep, arg = spec.partition(":")
    file = Path(path) if Path(path).is_file() else CHECKOUT / path
    shim = ModuleType("ml_collections")
    shim.ConfigDict = PlainConfig
    real_import = builtins.__import__

    def _import(name: str, *args: Any, **kwargs: Any) -> Any:
        return shim if name == "ml_collections" else real_import(name, *args, **kwargs)
    namespace = {"__builtins__": {**vars(builtins), "__import__": _import},
                 "__name__": "vertex_jax_plain_config", "__file__": str(file)}
    exec(compile(file.read_text(), str(file), "exec"), namespace)
    return namespace["get_config"](*((arg,) if sep else ()))


def load_run_config(spec: str) -> tuple[Any, str]:
    """(config, loader) for ``path[:variant]`` (``configs/xray.py:tiny``): with
    ml_collections when it imports, else :func:`plain_config` (loader ``"plain"``)."""
    try:
        import ml_collections  # noqa: F401
    except ImportError:
        return plain_config(spec), "plain"
    from vertex_jax.config_files import load_config
    return load_config(spec), "ml_collections"


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names: Iterable[str]) -> None:
        self.names = set(names)

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: absent on the lent GPU "
                                      f"machine)", name=name)
        return None


def block_imports(names: Iterable[str] = MISSING_ON_DEVICE) -> None:
    """Make ``names`` unimportable in this process, as on the lent machine."""
    for name in names:
        if name in sys.modules and sys.modules[name] is not None:
            raise RuntimeError(f"{name} is already imported; block it before importing the project")
    sys.meta_path.insert(0, _Blocker(names))


def set_field(config: Any, key: str, value: Any) -> None:
    """Set the dotted field ``key`` (``model.padding``) of ``config``; it must exist."""
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        node = node[name]
    if leaf not in node:
        raise KeyError(f"the config has no field {key!r}")
    node[leaf] = value


def point_config(spec: str, *, batch: int, remat: bool, dtype: str, depthwise: str = "",
                 overrides: dict[str, Any] | None = None) -> Any:
    """The run config of one measured point (``depthwise``: keep the config's if empty;
    ``overrides``: dotted fields set last, e.g. ``{"model.padding": "symmetric"}``)."""
    config, _ = load_run_config(spec)
    config.model.dtype = dtype
    config.model.remat = remat
    if depthwise:
        config.model.depthwise = depthwise
    config.batch_size = config.eval_batch_size = batch
    for key, value in (overrides or {}).items():
        set_field(config, key, value)
    return config

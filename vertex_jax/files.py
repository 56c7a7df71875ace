"""Atomic file writes: a reader sees the old file, or the whole new one, never a part.

The content goes to a hidden temporary file in the target's folder (same file system),
which is then ``os.replace``d onto the target; on any error the temporary file is
removed and the target is left as it was. Temporary names end in ``.tmp`` so a folder
can sweep leftovers of a crashed process with ``glob("*.tmp")``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden, unique temporary name beside ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed onto ``path``.

    If the block removes the temporary file (decides not to publish), nothing is renamed.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        if tmp.exists():
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator:
    """``open`` a temporary file for writing; it replaces ``path`` when the block ends cleanly.

    The file is created with ``os.open`` and mode 0o666, so the umask decides its permissions
    (``mkstemp`` would force 0600 onto the final file).
    """
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)

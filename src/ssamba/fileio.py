"""Writing files so that a reader never sees half of one: the one home of atomic writes.

Every writer in ssamba goes through :func:`atomic_write`: the content goes to a temporary file in
the same folder (so the final rename stays on one file system), is flushed to disk, and replaces
the target in one ``os.replace``. A crash, a full disk or ``kill -9`` leaves either the old file or
the new one, never a torn one; the temporary file is removed on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it onto ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # the data is on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any, **dumps: Any) -> Path:
    """JSON with a two-space indent and a final newline (``dumps`` overrides, e.g. ``default``)."""
    dumps.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(data, **dumps) + "\n")


def replace_folder(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move a complete folder ``tmp`` onto ``target`` (removing what ``target`` held first).

    A folder cannot be swapped in one step: between the removal and the rename ``target`` is
    missing, never partial, so a reader that finds it finds it whole."""
    target = Path(target)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target

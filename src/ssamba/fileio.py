"""Writing files so that a reader never sees half of one: the one home of atomic writes.

Every writer in ssamba goes through :func:`atomic_write`: the content goes to a temporary file in
the same folder (so the final rename stays on one file system), is flushed to disk, and replaces
the target in one ``os.replace``. A crash, a full disk or ``kill -9`` leaves either the old file or
the new one, never a torn one; the temporary file is removed on failure. A folder is built the
same way (:func:`staged_folder`). Temporary names are unique (``mkstemp`` / ``mkdtemp``), so two
writers never share one; what a killed process leaves behind (``.NAME.XXXX.tmp`` files,
``.tmp_NAME_XXXX`` folders) is removed by :func:`remove_temporaries` on the next run. A folder that
one process writes into for a long time (a training run, an embedding store) is held with
:func:`lock_folder`, so a second writer is refused instead of interleaving with the first.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ssamba.errors import UsageError

TEMP_FILE_SUFFIX = ".tmp"  # atomic_write's temporary files: .NAME.XXXXXXXX.tmp
TEMP_FOLDER_PREFIX = ".tmp_"  # staged_folder's temporary folders: .tmp_NAME_XXXXXXXX


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc``); else
    set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have (0666 or 0777 less the
    umask): ``mkstemp`` makes files 0600 and ``mkdtemp`` folders 0700, which would leave a
    shared results folder readable by its owner alone."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` to produce the file, then move it onto ``path`` atomically (with
    the mode the umask gives a new file)."""
    path = Path(path)
    if path.is_dir():  # refused before anything is written, naming the user's path
        raise UsageError(f"{path}: a folder; expected a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_FILE_SUFFIX)
    os.close(fd)
    honour_umask(name)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # the data is on disk before the rename makes it visible
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as err:  # name the target, never the temporary file
            raise OSError(err.errno, err.strerror, str(path)) from None
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


def csv_text(header: Sequence[Any], rows: Iterable[Sequence[Any]], line_end: str = "\r\n") -> str:
    """A CSV document, the header line first, as the csv module writes it (minimal quoting).
    ``line_end``: the csv module's ``\\r\\n`` (RFC 4180), or ``"\\n"`` for files that line tools
    (diff, grep) read too."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def atomic_write_csv(
    path: str | os.PathLike,
    header: Sequence[Any],
    rows: Iterable[Sequence[Any]],
    line_end: str = "\r\n",
) -> Path:
    """Every CSV the library writes (manifests, class lists, reports): :func:`csv_text` in UTF-8,
    written atomically."""
    return atomic_write_text(path, csv_text(header, rows, line_end))


def check_folder_target(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse an output folder's path that exists as something else (a file): one line naming
    the path, before anything is written (a folder would otherwise replace the user's file,
    or fail later naming a temporary). Returns the path."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir():
        kind = "a broken link" if not path.exists() else "a file"
        raise UsageError(
            f"{path}: not a folder ({kind} is there) but it names the {what}; choose another "
            "path or move it away"
        )
    return path


def replace_folder(tmp: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move a complete folder ``tmp`` onto ``target`` (removing what ``target`` held first).

    A folder cannot be swapped in one step: between the removal and the rename ``target`` is
    missing, never partial, so a reader that finds it finds it whole."""
    target = Path(target)
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    os.replace(tmp, target)
    return target


@contextmanager
def staged_folder(target: str | os.PathLike, prefix: str | None = None) -> Iterator[Path]:
    """Build a folder in a temporary sibling, then move it onto ``target`` whole.

    ``with staged_folder("out/best") as tmp: write files into tmp``. On success the folder
    replaces ``target`` (:func:`replace_folder`); on any failure (a full disk, an exception in
    the block) the temporary folder is removed and ``target`` is left as it was. ``prefix``
    names the temporary folder (default ``.tmp_<name>_``)."""
    target = check_folder_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_folder(target.parent, prefix or temp_folder_prefix(target))
    try:
        yield tmp
        replace_folder(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def make_temp_folder(parent: str | os.PathLike, prefix: str) -> Path:
    """A new temporary folder in ``parent`` with the mode the umask gives a new folder."""
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    honour_umask(tmp, folder=True)
    return tmp


def temp_folder_prefix(target: str | os.PathLike) -> str:
    return f"{TEMP_FOLDER_PREFIX}{Path(target).name}_"


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a temporary file or folder of this module."""
    name = Path(path).name
    if name.startswith(TEMP_FOLDER_PREFIX):
        return True
    return name.startswith(".") and name.endswith(TEMP_FILE_SUFFIX) and name.count(".") >= 3


def remove_temporaries(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and folders a killed writer left in ``folder`` (and below it
    when ``recursive``); returns what was removed.

    Call it only while no other process writes into ``folder`` (a run's own folder at its start,
    an embedding folder under its lock): a live writer's temporary file looks the same."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(".*") if recursive else folder.glob(".*")
    removed = [p for p in found if is_temporary(p)]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


LOCK_FILE = ".lock"  # held (lockf) by the process writing into a folder


def lock_folder(folder: str | os.PathLike, doing: str = "writing into this folder") -> int:
    """Take ``folder``'s lock file (non-blocking) and return its descriptor (``os.close`` it to
    release). A UsageError naming ``doing`` when another process holds it.

    A POSIX record lock (``lockf``), not ``flock``: it belongs to this process alone, so forked
    children (DataLoader workers) do not hold it, and the kernel releases it when the process
    ends, also by ``kill -9``: a killed run can be resumed at once, never finds its folder locked
    by its own orphaned workers. (The same process taking it twice is not refused.)"""
    fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(
            f"{folder}: another process is {doing} (it holds {LOCK_FILE}); wait for it to "
            "finish or use another output folder"
        ) from None
    return fd

"""A folder of embeddings that an interrupted run resumes: what ``ssamba embed`` writes.

Python::

    files = collect_inputs(["data/", "more.wav", "list.csv"])     # (file, base folder) pairs
    with EmbeddingStore("emb/", embedding_settings(model, "model/"), format="npz") as store:
        todo, keys = store.plan([f for f, _ in files], output_keys(files))
        for batch in embed_files(model, [files[i][0] for i in todo]):
            ...  # store.add(file, key, batch.embeddings, j) for each embedded file
        store.save_index()
        store.finish()

Layout of the folder:

- ``index.json``: ``format``, ``settings`` (checkpoint, model SHA-256, layers, windows), ``files``
  (input path -> its ``key``, ``seconds``, ``num_frames``, ``shapes`` of its arrays and where
  they are) and ``bad_files`` (path -> problem);
- ``.lock``: held (``flock``) by the process writing into the folder, so a second one is refused;
- ``.entries.jsonl``: while a run goes, each file's entry is appended once its arrays are
  complete on disk (``index.json`` takes them over when the run ends or is interrupted);
- ``format="npy"``: ``KEY.npy`` per input (with frames also ``KEY.frames.npy`` and
  ``KEY.timestamps.npy``), the keys mirroring the inputs' names below their common folder;
- ``npz`` / ``safetensors``: one ``embeddings.<format>`` with arrays ``clip/KEY`` (and
  ``frames/KEY``, ``timestamps/KEY``), staged in ``.parts/`` while the run goes, packed at the end.

A folder made with other settings is refused unless ``overwrite`` (its outputs are then removed);
one made with the same settings is resumed: a file whose entry is recorded and whose arrays are
whole (readable, of the recorded shape) is not embedded again; any other is. Every file is
written atomically (:mod:`ssamba.fileio`) and an entry only after its arrays, so a kill or a full
disk at any moment leaves no entry without its metadata and no metadata without its arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ssamba.constants import EMBEDDING_FORMATS
from ssamba.data import DECODED_INPUTS, check_input, read_manifest
from ssamba.data.inputs import AUDIO_FILE, AUDIO_FOLDER, MISSING
from ssamba.embeddings import Embeddings, model_fingerprint
from ssamba.errors import UsageError
from ssamba.fileio import (
    LOCK_FILE,
    atomic_write,
    atomic_write_json,
    check_folder_target,
    lock_folder,
    remove_temporaries,
)

#: What ``ssamba embed`` takes: every form a decoding reader takes, and audio files.
EMBEDDED_INPUTS = DECODED_INPUTS | {AUDIO_FILE}

__all__ = [
    "FORMATS",
    "INDEX_FILE",
    "EmbeddingStore",
    "collect_inputs",
    "embedding_settings",
    "output_keys",
]

INDEX_FILE = "index.json"
PARTS_DIR = ".parts"
JOURNAL_FILE = ".entries.jsonl"  # each embedded file's entry, appended once its arrays are whole
ENTRY_FIELDS = ("key", "seconds", "num_frames")
FORMATS = EMBEDDING_FORMATS


# --------------------------------------------------------------------------------------------
# Inputs and their output names
# --------------------------------------------------------------------------------------------


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(file, base folder) for every audio file named by ``inputs`` (files, folders searched
    recursively, manifests, ``PATH:SPLIT``, data set folders), absolute, each file once. Tar
    shards are refused (their clips are not files: embed the manifest they were made from)."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        form = check_input(item, EMBEDDED_INPUTS, "`ssamba embed`")
        path = form.path
        if form.kind == MISSING:
            raise UsageError(f"{path}: no such file or folder")
        if form.kind == AUDIO_FILE:
            found.append((path, path.parent))
            continue
        examples = read_manifest(item, ignore_labels=True)
        if form.kind == AUDIO_FOLDER:  # names below the folder given
            found.extend((ex.path, path) for ex in examples)
        else:  # a manifest: names below each file's own folder
            found.extend((ex.path, ex.path.parent) for ex in examples)
    seen, unique = set(), []
    for file, base in found:
        key = os.path.abspath(file)
        if key not in seen:
            seen.add(key)
            unique.append((Path(key), Path(os.path.abspath(base))))
    return unique


def output_keys(files: list[tuple[Path, Path]]) -> list[str]:
    """Relative output names (POSIX, suffix dropped) mirroring the inputs below their common
    base folder; files that would collide keep their audio suffix (``a.wav``, ``a.flac``)."""
    bases = [str(base) for _, base in files]
    root = Path(os.path.commonpath(bases)) if bases else Path(".")
    rels = [file.relative_to(root) for file, _ in files]
    stems = [rel.with_suffix("").as_posix() for rel in rels]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else rel.as_posix() for s, rel in zip(stems, rels, strict=True)]


def embedding_settings(
    model,
    checkpoint: str | os.PathLike,
    layers: Sequence[int] = (-1,),
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
) -> dict:
    """What identifies a folder's embeddings: the model (its SHA-256) and the embedding options.

    ``checkpoint`` is recorded as an absolute path when it is one (a preset name as given)."""
    path = Path(checkpoint)
    return {
        "checkpoint": str(path.resolve()) if path.exists() else str(checkpoint),
        "model_sha256": model_fingerprint(model),
        "arch": model.config.arch,
        "embed_dim": model.config.embed_dim,
        "layers": list(layers),
        "window_seconds": window_seconds,
        "hop_seconds": hop_seconds,
    }


# --------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------


class EmbeddingStore:
    """An output folder of embeddings (see the module docstring), opened for writing.

    Opening locks the folder (a second writer gets :class:`~ssamba.errors.UsageError`), removes
    the temporary files a killed run left, and checks an earlier run's ``index.json``: other
    settings (or format) raise UsageError unless ``overwrite``, which removes that run's outputs.
    So does a folder that holds other files and no index (``overwrite``: write among them). The
    entries of an earlier run are verified (each array readable, of its recorded shape) and an
    entry that fails is embedded again. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        settings: dict,
        format: str = "npy",
        frames: bool = False,
        overwrite: bool = False,
    ):
        if format not in FORMATS:
            raise UsageError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.out = check_folder_target(out, "embeddings folder")
        self.settings = settings
        self.format = format
        self.frames = frames
        self.single = format != "npy"
        self.single_file = self.out / f"embeddings.{format}" if self.single else None
        self.stage = self.out / PARTS_DIR if self.single else self.out
        self.out.mkdir(parents=True, exist_ok=True)
        # before anything in the folder is read or changed
        self._lock = lock_folder(self.out, "writing embeddings into this folder")
        self._journal = None
        try:
            self._open(overwrite)
        except BaseException:
            self.close()
            raise

    def _open(self, overwrite: bool) -> None:
        remove_temporaries(self.out, recursive=True)
        previous = self._previous(overwrite)
        self.existing: dict[str, np.ndarray] = {}
        if self.single and self.single_file.is_file() and previous:
            self.existing = _read_single(self.single_file)
        recorded = {**previous.get("files", {}), **_read_journal(self.out / JOURNAL_FILE)}
        self.stale = {f: e for f, e in recorded.items() if not self._intact(e)}
        self.index: dict = {
            "format": self.format,
            "settings": self.settings,
            "files": {f: e for f, e in recorded.items() if f not in self.stale},
            "bad_files": {},
        }
        if self.single:
            self.index["file"] = self.single_file.name
        # the folder is marked as ours, holding only verified entries, before any array is written
        self._journal = open(self.out / JOURNAL_FILE, "a", encoding="utf-8")
        self.save_index()

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the folder (also done by the kernel when the process dies)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    @property
    def entries(self) -> dict[str, dict]:
        """Input path -> its entry in ``index.json``."""
        return self.index["files"]

    @property
    def bad_files(self) -> dict[str, str]:
        return self.index["bad_files"]

    def _previous(self, overwrite: bool) -> dict:
        """The earlier run's index when it can be resumed ({} when there is none or it was
        replaced)."""
        path = self.out / INDEX_FILE
        if not path.is_file():
            if _other_files(self.out) and not overwrite:
                raise UsageError(
                    f"{self.out}: the folder holds other files (no {INDEX_FILE}); use another "
                    "output folder or pass --overwrite to write into it"
                )
            return {}
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        old = previous.get("settings")
        if old is None or (old == self.settings and previous.get("format") == self.format):
            return previous
        if not overwrite:
            changed = sorted(k for k in self.settings if old.get(k) != self.settings[k])
            if previous.get("format") != self.format:
                changed.append("format")
            raise UsageError(
                f"{self.out} holds embeddings made with other settings ({', '.join(changed)}); "
                "use another output folder or pass --overwrite"
            )
        _remove_outputs(self.out, previous)
        return {}

    def _intact(self, entry: dict) -> bool:
        """Whether an earlier run's entry is complete: its metadata, and every array readable
        with the shape it was recorded with (a truncated .npy is not)."""
        if not isinstance(entry, dict) or not all(k in entry for k in ENTRY_FIELDS):
            return False
        shapes = entry.get("shapes", {})
        for kind, name in _npy_names(entry["key"], self.frames).items():
            shape = shapes.get(kind)
            packed = self.existing.get(f"{kind}/{entry['key']}")
            if packed is not None and (shape is None or list(packed.shape) == shape):
                continue
            if not _intact_npy(self.stage / name, shape):
                return False
        return True

    def plan(self, files: Sequence[Path], keys: Sequence[str]) -> tuple[list[int], list[str]]:
        """The positions of ``files`` still to embed, and every file's key (a file embedded by an
        earlier run keeps its key; a new key that is taken gets a ``~N`` suffix)."""
        keys = list(keys)
        known = {**self.stale, **self.entries}
        used = {entry["key"] for entry in known.values() if isinstance(entry, dict)}
        todo: list[int] = []
        for i, file in enumerate(files):
            earlier = known.get(str(file))
            if isinstance(earlier, dict) and "key" in earlier:
                keys[i] = earlier["key"]
            elif keys[i] in used:
                n = 1
                while f"{keys[i]}~{n}" in used:
                    n += 1
                keys[i] = f"{keys[i]}~{n}"
            used.add(keys[i])
            if str(file) not in self.entries:
                todo.append(i)
        return todo, keys

    def add(self, file: str | os.PathLike, key: str, emb: Embeddings, j: int) -> None:
        """Write row ``j`` of ``emb`` as the arrays of ``file``, then its entry.

        The entry (metadata and array shapes) is appended to the journal only once every array
        is complete on disk: a kill at any moment leaves no entry without its arrays, and arrays
        without an entry are embedded again."""
        names = _npy_names(key, self.frames)
        arrays = {"clip": emb.clip[j].numpy()}
        if self.frames:
            arrays["frames"] = emb.frames[j].numpy()
            arrays["timestamps"] = emb.timestamps[j].numpy()
        for kind, array in arrays.items():
            _save_npy(self.stage / names[kind], array)
        entry = {
            "key": key,
            "seconds": round(emb.durations[j], 6),
            "num_frames": int(emb.frames[j].shape[0]),
            "shapes": {kind: list(array.shape) for kind, array in arrays.items()},
        }
        if not self.single:
            entry.update(names)
        self._journal.write(json.dumps({"file": str(file), **entry}) + "\n")
        self._journal.flush()  # in the kernel's hands: survives kill -9
        self.entries[str(file)] = entry

    def add_bad(self, file: str | os.PathLike, problem: str) -> None:
        """Record a file that could not be embedded (listed in ``index.json``)."""
        self.bad_files[str(file)] = problem

    def save_index(self) -> None:
        """Write ``index.json`` as things stand (also after an interruption); it then holds every
        journal entry, so the journal starts over."""
        atomic_write_json(self.out / INDEX_FILE, self.index)
        if self._journal is not None:
            self._journal.truncate(0)

    def finish(self) -> None:
        """Pack the staged arrays into the single file (npz / safetensors); nothing for npy."""
        if self.single:
            _pack_single(self.single_file, self.stage, self.existing, self.index, self.frames)
            self.save_index()
            if self.stage.exists():  # only once the index no longer needs the parts
                shutil.rmtree(self.stage)


def _other_files(folder: Path) -> bool:
    """Whether ``folder`` holds anything but this module's own bookkeeping."""
    return any(p.name not in (LOCK_FILE, JOURNAL_FILE) for p in folder.iterdir())


def _read_journal(path: Path) -> dict[str, dict]:
    """Input path -> entry, from the journal of a run that did not finish. A line cut short by
    a kill is left out (that file is embedded again)."""
    if not path.is_file():
        return {}
    entries = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("file"), str):
            entries[record.pop("file")] = record
    return entries


def _intact_npy(path: Path, shape: list[int] | None) -> bool:
    """Whether ``path`` is a whole .npy (of ``shape`` when given); reads only its header."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return shape is None or list(array.shape) == list(shape)


def _npy_names(key: str, frames: bool) -> dict[str, str]:
    names = {"clip": f"{key}.npy"}
    if frames:
        names["frames"] = f"{key}.frames.npy"
        names["timestamps"] = f"{key}.timestamps.npy"
    return names


def _save_npy(path: Path, array: np.ndarray) -> None:
    # through a file object: np.save would append ".npy" to the temporary file's name
    atomic_write(path, lambda tmp: _write_with(tmp, np.save, array))


def _write_with(tmp: Path, save, *args, **kwargs) -> None:
    with open(tmp, "wb") as f:
        save(f, *args, **kwargs)


def _remove_outputs(out: Path, index: dict) -> None:
    """Delete the outputs an earlier run listed in its index and journal (before --overwrite)."""
    if (out / PARTS_DIR).exists():
        shutil.rmtree(out / PARTS_DIR)
    if index.get("file"):
        (out / index["file"]).unlink(missing_ok=True)
    entries = [*index.get("files", {}).values(), *_read_journal(out / JOURNAL_FILE).values()]
    (out / JOURNAL_FILE).unlink(missing_ok=True)
    if index.get("format") != "npy":
        return
    for entry in entries:
        if isinstance(entry, dict) and "key" in entry:
            for name in _npy_names(entry["key"], True).values():
                (out / name).unlink(missing_ok=True)


def _read_single(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz / safetensors file; none when it is damaged (they are redone)."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return load_file(str(path))
    except (OSError, ValueError, EOFError, SafetensorError, zipfile.BadZipFile):
        return {}


def _pack_single(path: Path, stage: Path, existing: dict, index: dict, frames: bool) -> None:
    """Gather the staged per-file arrays and the existing ones into one npz/safetensors file."""
    arrays = dict(existing)
    for entry in index["files"].values():
        for kind, name in _npy_names(entry["key"], frames).items():
            part = stage / name
            if part.is_file():
                arrays[f"{kind}/{entry['key']}"] = np.load(part)
    keep = {
        f"{kind}/{entry['key']}"
        for entry in index["files"].values()
        for kind in _npy_names(entry["key"], frames)
    }
    arrays = {k: np.ascontiguousarray(v) for k, v in sorted(arrays.items()) if k in keep}
    if path.suffix == ".npz":
        atomic_write(path, lambda tmp: _write_with(tmp, np.savez, **arrays))
    else:
        atomic_write(path, lambda tmp: save_file(arrays, str(tmp)))
    for entry in index["files"].values():
        entry.update({kind: f"{kind}/{entry['key']}" for kind in _npy_names(entry["key"], frames)})
    atomic_write_json(path.parent / INDEX_FILE, index)

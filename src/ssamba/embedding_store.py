"""A folder of embeddings that an interrupted run resumes: what ``ssamba embed`` writes.

Python::

    files = collect_inputs(["data/", "more.wav", "list.csv"])     # (file, base folder) pairs
    store = EmbeddingStore("emb/", embedding_settings(model, "model/"), format="npz")
    todo, keys = store.plan([f for f, _ in files], output_keys(files))
    for batch in embed_files(model, [files[i][0] for i in todo]):
        ...  # store.add(file, key, batch.embeddings, j) for each embedded file
    store.save_index()
    store.finish()

Layout of the folder:

- ``index.json``: ``format``, ``settings`` (checkpoint, model SHA-256, layers, windows), ``files``
  (input path -> its ``key``, ``seconds``, ``num_frames`` and where its arrays are) and
  ``bad_files`` (path -> problem);
- ``format="npy"``: ``KEY.npy`` per input (with frames also ``KEY.frames.npy`` and
  ``KEY.timestamps.npy``), the keys mirroring the inputs' names below their common folder;
- ``npz`` / ``safetensors``: one ``embeddings.<format>`` with arrays ``clip/KEY`` (and
  ``frames/KEY``, ``timestamps/KEY``), staged in ``.parts/`` while the run goes, packed at the end.

A folder made with other settings is refused unless ``overwrite`` (its outputs are then removed);
one made with the same settings is resumed: a file whose arrays exist is not embedded again.
Every file is written atomically (:mod:`ssamba.fileio`), so an interruption leaves whole files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from ssamba.data import AUDIO_EXTENSIONS, read_manifest
from ssamba.embeddings import Embeddings, model_fingerprint
from ssamba.errors import UsageError
from ssamba.fileio import atomic_write, atomic_write_json

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
FORMATS = ("npy", "npz", "safetensors")


# --------------------------------------------------------------------------------------------
# Inputs and their output names
# --------------------------------------------------------------------------------------------


def collect_inputs(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """(file, base folder) for every audio file named by ``inputs`` (files, folders searched
    recursively, manifests), absolute, each file once."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
        if path.suffix.lower() in AUDIO_EXTENSIONS and not path.is_dir():
            found.append((path, path.parent))
            continue
        examples = read_manifest(path, ignore_labels=True)
        if path.is_dir():  # names below the folder given
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

    Opening checks an earlier run's ``index.json``: other settings (or format) raise
    :class:`~ssamba.errors.UsageError` unless ``overwrite``, which removes that run's outputs. So
    does a folder that holds other files and no index (``overwrite``: write among them).
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
        self.out = Path(out)
        self.settings = settings
        self.format = format
        self.frames = frames
        self.single = format != "npy"
        self.single_file = self.out / f"embeddings.{format}" if self.single else None
        self.stage = self.out / PARTS_DIR if self.single else self.out
        self.out.mkdir(parents=True, exist_ok=True)
        previous = self._previous(overwrite)
        self.existing: dict[str, np.ndarray] = {}
        if self.single and self.single_file.is_file() and previous:
            self.existing = _read_single(self.single_file)
        self.index: dict = {
            "format": format,
            "settings": settings,
            "files": dict(previous.get("files", {})),
            "bad_files": {},
        }
        if self.single:
            self.index["file"] = self.single_file.name

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
            if any(self.out.iterdir()) and not overwrite:
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

    def plan(self, files: Sequence[Path], keys: Sequence[str]) -> tuple[list[int], list[str]]:
        """The positions of ``files`` still to embed, and every file's key (a file embedded by an
        earlier run keeps its key; a new key that is taken gets a ``~N`` suffix). Writes the
        index, so that a run interrupted from here on is resumed."""
        keys = list(keys)
        used = {entry["key"] for entry in self.entries.values()}
        todo: list[int] = []
        for i, file in enumerate(files):
            if str(file) in self.entries:
                keys[i] = self.entries[str(file)]["key"]
            elif keys[i] in used:
                n = 1
                while f"{keys[i]}~{n}" in used:
                    n += 1
                keys[i] = f"{keys[i]}~{n}"
            used.add(keys[i])
            if self._done(keys[i]):
                self.entries.setdefault(str(file), {"key": keys[i]})
            else:
                todo.append(i)
        atomic_write_json(self.out / INDEX_FILE, self.index)
        return todo, keys

    def _done(self, key: str) -> bool:
        names = _npy_names(key, self.frames)
        if all((self.stage / n).is_file() for n in names.values()):
            return True
        return self.single and all(f"{kind}/{key}" in self.existing for kind in names)

    def add(self, file: str | os.PathLike, key: str, emb: Embeddings, j: int) -> None:
        """Write row ``j`` of ``emb`` as the arrays of ``file``."""
        names = _npy_names(key, self.frames)
        if self.frames:
            _save_npy(self.stage / names["frames"], emb.frames[j].numpy())
            _save_npy(self.stage / names["timestamps"], emb.timestamps[j].numpy())
        _save_npy(self.stage / names["clip"], emb.clip[j].numpy())
        self.entries[str(file)] = {
            "key": key,
            "seconds": round(emb.durations[j], 6),
            "num_frames": int(emb.frames[j].shape[0]),
        }

    def add_bad(self, file: str | os.PathLike, problem: str) -> None:
        """Record a file that could not be embedded (listed in ``index.json``)."""
        self.bad_files[str(file)] = problem

    def save_index(self) -> None:
        """Write ``index.json`` as things stand (also after an interruption)."""
        for entry in self.entries.values():
            if not self.single:
                entry.update(_npy_names(entry["key"], self.frames))
        atomic_write_json(self.out / INDEX_FILE, self.index)

    def finish(self) -> None:
        """Pack the staged arrays into the single file (npz / safetensors); nothing for npy."""
        if self.single:
            _pack_single(self.single_file, self.stage, self.existing, self.index, self.frames)


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
    """Delete the outputs an earlier run listed in its index (before --overwrite)."""
    if (out / PARTS_DIR).exists():
        shutil.rmtree(out / PARTS_DIR)
    if index.get("file"):
        (out / index["file"]).unlink(missing_ok=True)
    if index.get("format") != "npy":
        return
    for entry in index.get("files", {}).values():
        for name in _npy_names(entry["key"], True).values():
            (out / name).unlink(missing_ok=True)


def _read_single(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    return load_file(str(path))


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
    if stage.name == PARTS_DIR and stage.exists():
        shutil.rmtree(stage)

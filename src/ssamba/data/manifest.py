"""Manifests: what a data set holds (audio paths, labels, splits) and its class list.

:func:`read_manifest` detects the format:

- SSAST JSON ``{"data": [{"wav": path, "labels": "mid1,mid2"}, ...]}`` whose labels are mids of a
  ``class_labels_indices.csv`` (``index,mid,display_name``) found next to the JSON or passed as
  ``classes``;
- CSV with a header ``path,label[,split]`` (``wav``/``labels`` are accepted as column names too);
  a label cell may hold several labels separated by ``;`` or ``,`` (quoted) -> multi-label;
- a folder per class: ``root/<class>/**/*.wav|flac|ogg|mp3|...``;
- unlabeled audio for pretraining: a folder of audio files (searched recursively) or a text file
  with one path per line; any labeled manifest can be read with ``ignore_labels=True`` too;
- WebDataset tar shards (``ssamba shard``): ``DIR/shard-{000000..000123}.tar``, one ``.tar``, or
  a shard folder; each example is a clip inside a shard (:attr:`Example.offset`);
- a data set folder (``ssamba prepare``, ``ssamba data``): its manifest of every split
  (``all.csv``, ``manifest.csv``, ...).

What a path is (one of these forms, ``PATH:SPLIT``, or an audio file) is decided in one place,
:func:`ssamba.data.inputs.input_form`.

Relative paths resolve against the manifest's folder. Class order is deterministic: the order of the
``class_labels_indices.csv`` index, sorted names otherwise, or the ``classes`` passed in (so a test
set uses the training classes). :func:`read_class_list` is the one reader of class lists.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssamba.constants import AUDIO_EXTENSIONS, CLASS_LABELS_FILE
from ssamba.data.inputs import (
    AUDIO_FILE,
    DATASET_FOLDER,
    MISSING,
    SHARDS,
    input_form,
    manifests_in,
    split_spec,
)
from ssamba.data.shardfiles import shard_members
from ssamba.errors import ManifestError

_PATH_COLUMNS = ("path", "wav", "file", "filename")
_LABEL_COLUMNS = ("label", "labels")
_LABEL_SPLIT = re.compile(r"[;,]")


class ManifestWarning(UserWarning):
    """Something odd but usable in a manifest (e.g. a class with no examples)."""


@dataclass(frozen=True)
class Example:
    """One audio file with its labels (empty for unlabeled data) and optional split name."""

    path: Path
    labels: tuple[str, ...] = ()
    split: str | None = None
    # a clip inside a tar shard: ``path`` is the shard, the audio is ``size`` bytes at ``offset``
    offset: int | None = None
    size: int = 0
    duration: float | None = None


@dataclass
class Manifest:
    """A list of examples plus the class list (empty when unlabeled).

    ``display_names`` maps class names (AudioSet mids for SSAST JSON) to readable names when the
    manifest came with a ``class_labels_indices.csv``.
    """

    examples: list[Example]
    classes: list[str]
    multilabel: bool
    source: Path | None = None
    format: str = "list"
    display_names: dict[str, str] = field(default_factory=dict)
    split: str | None = None  # the split selected from ``source`` (None: all of it)

    def __post_init__(self) -> None:
        self._index = {name: i for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Example:
        return self.examples[i]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    @property
    def labeled(self) -> bool:
        return bool(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_index(self, name: str) -> int:
        return self._index[name]

    def label_indices(self, i: int) -> list[int]:
        return [self._index[name] for name in self.examples[i].labels]

    def targets(self, i: int) -> torch.Tensor:
        """One-hot (multi-hot for several labels) float32 target of example ``i``, shape (C,)."""
        y = torch.zeros(len(self.classes), dtype=torch.float32)
        for c in self.label_indices(i):
            y[c] = 1.0
        return y

    def class_counts(self) -> list[int]:
        """Number of examples carrying each class, in class order."""
        counts = Counter(name for ex in self.examples for name in ex.labels)
        return [counts.get(name, 0) for name in self.classes]

    def paths(self) -> list[Path]:
        return [ex.path for ex in self.examples]

    @property
    def spec(self) -> str:
        """How to name this manifest again: ``SOURCE`` or ``SOURCE:SPLIT``."""
        return f"{self.source}:{self.split}" if self.split else str(self.source)

    def splits(self) -> list[str]:
        """The split names the manifest's examples carry, sorted (empty: no split column)."""
        return sorted({ex.split for ex in self.examples if ex.split})

    def select_split(self, split: str) -> Manifest:
        """The examples of one split (the class list and multi-label flag of the whole file)."""
        kept = _keep_split(self.source, self.examples, split)
        return dataclasses.replace(self, examples=kept, split=split)


# --------------------------------------------------------------------------------------------------
# Reading manifests


def read_manifest(
    path: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    split: str | None = None,
    *,
    ignore_labels: bool = False,
    multilabel: bool | None = None,
    label_sequences: bool = False,
) -> Manifest:
    """Read a manifest of any supported format (see the module docstring).

    Args:
        path: a ``.json`` (SSAST), ``.csv``/``.tsv``, text list of paths, or a folder.
        classes: the class list to use, in order (e.g. the training set's ``manifest.classes``),
            or the path of a class list (anything :func:`read_class_list` reads, e.g. a
            ``class_labels_indices.csv``). A label not in it is an error. Default: the csv next
            to an SSAST JSON, else the sorted label names.
        split: keep only the examples of this split (CSV ``split`` column or JSON ``split`` key).
            Classes are computed before filtering, so every split of one file shares them.
        ignore_labels: read labels as absent (pretraining on a labeled set).
        multilabel: force the flag; default: True when some example has more than one label.
        label_sequences: labels are a sequence (DASL: one per second), and a file may be listed
            again with labels for part of it; otherwise a file listed twice with different
            labels is an error.

    ``path`` may also name a split as ``PATH:SPLIT`` (``data.csv:valid``, :func:`split_spec`).
    """
    if split is None and isinstance(path, (str, os.PathLike)):
        path, split = split_spec(path)
    form = input_form(path)
    path = form.path
    if form.kind == SHARDS:
        fmt, examples, where, classes = _read_shards(os.fspath(form.spec), classes)
    else:
        if form.kind == MISSING:
            raise ManifestError(f"{path}: manifest not found")
        if form.kind == AUDIO_FILE:
            raise ManifestError(f"{path}: this is an audio file, not a manifest (pass its folder)")
        if form.kind == DATASET_FOLDER:  # stands for its manifest of every split
            path = form.whole_set_manifest()
        fmt, examples, where = _read_examples(path, ignore_labels)
        _refuse_self_reference(path, examples, where)
    if fmt == "json" and classes is None and not ignore_labels:
        if (path.parent / CLASS_LABELS_FILE).is_file():
            classes = path.parent / CLASS_LABELS_FILE
    if ignore_labels:
        examples = [dataclasses.replace(ex, labels=()) for ex in examples]
    elif not label_sequences:
        _refuse_conflicting_labels(path, examples, where)
    labeled = any(ex.labels for ex in examples)
    if multilabel is None:  # decided on the whole file, so all its splits agree
        multilabel = any(len(ex.labels) > 1 for ex in examples)
    class_list: list[str] = []
    display: dict[str, str] = {}
    if labeled:
        class_list, display = _class_list(path, examples, where, classes)
    if split is not None:
        examples = _keep_split(path, examples, split)
    if not examples:
        raise ManifestError(f"{path}: empty manifest (no examples)")
    manifest = Manifest(
        examples=examples,
        classes=class_list,
        multilabel=multilabel,
        source=path,
        format=fmt,
        display_names=display,
        split=split,
    )
    empty = _empty_classes(manifest)
    if empty:
        warnings.warn(f"{path}: {empty}", ManifestWarning, stacklevel=2)
    return manifest


# --------------------------------------------------------------------------------------------------
# Splits: one manifest with a split column serves training and its held-out sets

#: The split names each role takes from a manifest's split column, in order of preference.
SPLIT_NAMES = {
    "train": ("train", "training"),
    "valid": ("valid", "validation", "val", "dev"),
    "test": ("test", "eval", "evaluation"),
}


def role_split(manifest: Manifest, role: str) -> str | None:
    """The split of ``manifest`` that serves ``role`` (train, valid, test; see
    :data:`SPLIT_NAMES`), None when it has none."""
    present = set(manifest.splits())
    return next((name for name in SPLIT_NAMES[role] if name in present), None)


def _for_role(manifest: Manifest, split: str | None, role: str) -> Manifest:
    """``manifest`` as the ``role`` set: the split asked for; else, when it has a split column,
    its rows of that role; else all of it."""
    if split is not None:
        return manifest.select_split(split)
    if not manifest.splits():
        return manifest
    name = role_split(manifest, role)
    if name is None:
        raise ManifestError(
            f"{manifest.source}: has a split column but no {role} rows (splits: "
            f"{', '.join(manifest.splits())}); name the split to use as "
            f"{manifest.source}:SPLIT"
        )
    return manifest.select_split(name)


def read_splits(
    train: str | os.PathLike,
    valid: str | os.PathLike | None = None,
    test: str | os.PathLike | None = None,
    *,
    roles: Sequence[str] = ("train", "valid", "test"),
    classes: Sequence[str] | str | os.PathLike | None = None,
    ignore_labels: bool = False,
    multilabel: bool | None = None,
    allow_overlap: bool = False,
) -> dict[str, Manifest | None]:
    """The training set and its held-out sets, ``{role: Manifest or None}`` for ``roles``.

    Each argument is a manifest, or ``PATH:SPLIT`` for one split of it. A manifest with a
    ``split`` column given without ``:SPLIT`` contributes the rows of its role (``--train
    all.csv --test all.csv``: the train rows, then the test rows; :data:`SPLIT_NAMES`), and a
    held-out set not given comes from the training manifest's rows of that role when it has
    them (``--train all.csv`` alone). Held-out sets use the training classes.

    A file in the training set and in a held-out one would inflate its scores: a ManifestError
    naming how many and one of them, unless ``allow_overlap`` (a deliberate check)."""
    path, split = split_spec(train)
    whole = read_manifest(path, classes, ignore_labels=ignore_labels, multilabel=multilabel)
    out: dict[str, Manifest | None] = {"train": _for_role(whole, split, "train")}
    given = {"valid": valid, "test": test}
    for role in roles:
        if role == "train":
            continue
        spec = given[role]
        if spec is None:
            from_train = split is None and role_split(whole, role) is not None
            out[role] = whole.select_split(role_split(whole, role)) if from_train else None
            continue
        held_path, held_split = split_spec(spec)
        if _same_file(held_path, path):
            held = whole
        else:
            held = read_manifest(
                held_path,
                whole.classes if whole.labeled else None,
                ignore_labels=ignore_labels,
                multilabel=whole.multilabel if whole.labeled else multilabel,
            )
        out[role] = _for_role(held, held_split, role)
    if not allow_overlap:
        check_no_overlap(out)
    return out


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(os.path.expanduser(a), os.path.expanduser(b))
    except OSError:
        return False


def _clip_key(ex: Example) -> tuple:
    return (os.path.realpath(ex.path), ex.offset)


def check_no_overlap(sets: dict[str, Manifest | None]) -> None:
    """A ManifestError when a file of the ``train`` set is also in another of ``sets``."""
    train = sets.get("train")
    if train is None:
        return
    seen = {_clip_key(ex) for ex in train}
    for role, held in sets.items():
        if role == "train" or held is None:
            continue
        shared = [ex for ex in held if _clip_key(ex) in seen]
        if shared:
            raise ManifestError(
                f"{len(shared)} file(s) of --train {train.spec} are also in --{role} "
                f"{held.spec} (e.g. {shared[0].path}): its scores would not be held out; use "
                "separate files or one manifest with a split column, or pass --allow-overlap "
                "for a deliberate check"
            )


def _read_shards(spec, classes):
    """Examples of the clips in WebDataset shards (see :mod:`.shardfiles`); the class list of
    their index unless ``classes`` is given."""
    members, index_classes = shard_members(spec)
    examples = [Example(m.shard, m.labels, None, m.offset, m.size, m.duration) for m in members]
    where = [f"{m.shard.name}:{m.key}" for m in members]
    if classes is None and index_classes and any(ex.labels for ex in examples):
        classes = index_classes
    return "shards", examples, where, classes


def _refuse_conflicting_labels(path: Path, examples: list[Example], where: list[str]) -> None:
    """A file listed twice with different labels: which is right cannot be guessed (a file
    listed twice with the same labels is left to check-data and the held-out checks)."""
    first: dict[tuple, int] = {}
    for k, ex in enumerate(examples):
        key = (ex.path, ex.offset)
        j = first.setdefault(key, k)
        if j != k and set(examples[j].labels) != set(ex.labels):
            raise ManifestError(
                f"{path}: {ex.path} is listed twice with different labels ({where[j]}: "
                f"{';'.join(examples[j].labels) or 'none'}; {where[k]}: "
                f"{';'.join(ex.labels) or 'none'}); keep one row"
            )


def _refuse_self_reference(path: Path, examples: list[Example], where: list[str]) -> None:
    """A manifest that lists itself (a list written into the folder it lists, say) would be
    decoded as audio: name the line instead."""
    if path.is_dir():
        return
    for k, ex in enumerate(examples):
        if ex.path.name == path.name and ex.path.exists() and os.path.samefile(ex.path, path):
            raise ManifestError(f"{path}: {where[k]}: lists the manifest itself, not an audio file")


def _read_examples(path: Path, ignore_labels: bool) -> tuple[str, list[Example], list[str]]:
    """(format, examples, where each example comes from: for error messages) of a manifest."""
    fmt = _detect_format(path)
    if fmt == "folder":
        examples = _read_folder(path, ignore_labels)
        if not examples[0].labels:
            fmt = "audio-folder"
        return fmt, examples, [str(ex.path) for ex in examples]
    if fmt == "json":
        return (fmt, *_read_json(path))
    if fmt == "csv":
        return (fmt, *_read_csv_manifest(path, ignore_labels))
    return (fmt, *_read_list(path))


def _class_list(
    path: Path,
    examples: list[Example],
    where: list[str],
    classes: Sequence[str] | str | os.PathLike | None,
) -> tuple[list[str], dict[str, str]]:
    """The class list (and display names) of a labeled manifest; every label must be in it."""
    display: dict[str, str] = {}
    if isinstance(classes, (str, os.PathLike)):
        class_list, display = read_class_list(classes)
        class_src = f"{classes}"
    elif classes is not None:
        class_list = [str(c) for c in classes]
        class_src = "the given classes"
        if len(set(class_list)) != len(class_list):
            raise ManifestError(f"{path}: the given classes contain duplicates")
    else:
        class_list = sorted({name for ex in examples for name in ex.labels})
        class_src = ""
    known = set(class_list)
    for k, ex in enumerate(examples):
        if not ex.labels:
            raise ManifestError(f"{path}: {where[k]}: no label for {ex.path}")
        unknown = [name for name in ex.labels if name not in known]
        if unknown:
            raise ManifestError(
                f"{path}: {where[k]}: unknown label {unknown[0]!r} "
                f"(not in {class_src or 'the classes'})"
            )
    return class_list, display


def _keep_split(path: Path, examples: list[Example], split: str) -> list[Example]:
    splits = {ex.split for ex in examples}
    if splits == {None}:
        raise ManifestError(f"{path}: split {split!r} requested but the manifest has no splits")
    kept = [ex for ex in examples if ex.split == split]
    if not kept:
        names = ", ".join(sorted(s for s in splits if s is not None))
        raise ManifestError(f"{path}: no examples in split {split!r} (splits: {names})")
    return kept


def _empty_classes(manifest: Manifest) -> str | None:
    """A warning text naming the classes without examples, if any (a split may lack some)."""
    if not manifest.labeled:
        return None
    counts = manifest.class_counts()
    empty = [c for c, n in zip(manifest.classes, counts, strict=True) if n == 0]
    if not empty:
        return None
    shown = ", ".join(repr(c) for c in empty[:10]) + (" ..." if len(empty) > 10 else "")
    return f"{len(empty)} class(es) with no examples: {shown}"


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in AUDIO_EXTENSIONS:
        raise ManifestError(f"{path}: this is an audio file, not a manifest (pass its folder)")
    head = _read_text(path)[:4096].lstrip()
    if head.startswith("{"):
        return "json"
    first = head.splitlines()[0].lower() if head else ""
    cells = [c.strip() for c in first.split(",")]
    if len(cells) > 1 and any(c in _PATH_COLUMNS for c in cells):
        return "csv"
    return "list"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(
            f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})"
        ) from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror or e})") from None


def _resolve(base: Path, name: str) -> Path:
    p = Path(os.path.expanduser(name.strip()))
    return p if p.is_absolute() else base / p


def _split_labels(cell: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in _LABEL_SPLIT.split(cell) if s.strip())


def _read_folder(root: Path, ignore_labels: bool) -> list[Example]:
    files = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file()
    )
    files = [
        p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    if not files:
        held = ", ".join(p.name for p in manifests_in(root)[:6])
        if held:
            raise ManifestError(
                f"{root}: no audio files found; it holds manifests ({held}): pass one of them"
            )
        raise ManifestError(
            f"{root}: no audio files found (extensions: {', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    top_level = [p for p in files if p.parent == root]
    if ignore_labels or top_level:
        # audio directly under the root: an unlabeled collection (searched recursively)
        return [Example(p) for p in files]
    return [Example(p, (p.relative_to(root).parts[0],)) for p in files]


def _read_json_value(path: Path) -> Any:
    """The JSON value in ``path``; malformed JSON is a ManifestError naming line and column."""
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})"
        ) from None


def _read_json(path: Path) -> tuple[list[Example], list[str]]:
    obj = _read_json_value(path)
    data = obj.get("data") if isinstance(obj, dict) else obj
    if not isinstance(data, list):
        raise ManifestError(f'{path}: expected {{"data": [{{"wav": ..., "labels": ...}}, ...]}}')
    base = path.parent
    examples = []
    for k, entry in enumerate(data):
        if isinstance(entry, str):
            entry = {"wav": entry}
        if not isinstance(entry, dict):
            raise ManifestError(f"{path}: data[{k}]: expected an object with a 'wav' key")
        wav = entry.get("wav", entry.get("path"))
        if not isinstance(wav, str) or not wav.strip():
            raise ManifestError(f"{path}: data[{k}]: missing 'wav' (the audio path)")
        labels = entry.get("labels", entry.get("label", ""))
        if isinstance(labels, list):
            labels = ",".join(str(x) for x in labels)
        if not isinstance(labels, str):
            raise ManifestError(f"{path}: data[{k}]: 'labels' must be a string like 'a,b'")
        split = entry.get("split")
        examples.append(
            Example(
                _resolve(base, wav), _split_labels(labels), None if split is None else str(split)
            )
        )
    return examples, [f"data[{k}]" for k in range(len(examples))]


def _read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    text = _read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
    rows = []
    try:
        for row in reader:
            if row and any(c.strip() for c in row) and not row[0].lstrip().startswith("#"):
                rows.append((reader.line_num, row))
    except csv.Error as e:
        raise ManifestError(f"{path}: line {reader.line_num}: malformed CSV ({e})") from None
    if not rows:
        raise ManifestError(f"{path}: empty manifest (no header)")
    return rows


def _read_csv_manifest(path: Path, ignore_labels: bool = False) -> tuple[list[Example], list[str]]:
    rows = _read_csv_rows(path)
    (_, header), body = rows[0], rows[1:]
    cols = {name.strip().lower(): k for k, name in enumerate(header)}
    path_col = next((cols[c] for c in _PATH_COLUMNS if c in cols), None)
    if path_col is None:
        raise ManifestError(
            f"{path}: line {rows[0][0]}: no 'path' column in the header {','.join(header)!r} "
            f"(expected path,label[,split])"
        )
    label_col = next((cols[c] for c in _LABEL_COLUMNS if c in cols), None)
    split_col = cols.get("split")
    others = [name for name in header if name.strip().lower() not in {*_PATH_COLUMNS, "split"}]
    if label_col is None and others and not ignore_labels:
        # a column that may hold the labels under another name: reading the file as unlabelled
        # would silently drop them
        raise ManifestError(
            f"{path}: line {rows[0][0]}: no label column in the header {','.join(header)!r} "
            f"(looked for {' or '.join(_LABEL_COLUMNS)}; rename the label column, or drop the "
            "other columns for unlabelled audio)"
        )
    base = path.parent
    examples: list[Example] = []
    where: list[str] = []
    for line, row in body:
        if len(row) != len(header):
            raise ManifestError(
                f"{path}: line {line}: {len(row)} field(s), the header has {len(header)} "
                f"(quote labels that contain commas)"
            )
        name = row[path_col].strip()
        if not name:
            raise ManifestError(f"{path}: line {line}: empty path")
        labels = _split_labels(row[label_col]) if label_col is not None else ()
        split = row[split_col].strip() or None if split_col is not None else None
        examples.append(Example(_resolve(base, name), labels, split))
        where.append(f"line {line}")
    return examples, where


def _read_list(path: Path) -> tuple[list[Example], list[str]]:
    base = path.parent
    examples, where = [], []
    for k, line in enumerate(_read_text(path).splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            examples.append(Example(_resolve(base, line)))
            where.append(f"line {k}")
    return examples, where


# --------------------------------------------------------------------------------------------------
# Class lists


def read_class_list(path: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """Class names in order and a ``name -> display name`` dict, from any class list:

    - a ``class_labels_indices.csv`` (``index,mid,display_name``; names are the mids, in index
      order);
    - a ``classes.json`` (a list of names, or ``{"classes": [...]}``; no display names), as
      fine-tuning writes next to a model;
    - a labeled manifest (its classes, in its order: the training set's class list).

    Raises :class:`ManifestError` naming the file and what is wrong.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ManifestError(f"{path}: class list not found")
    if path.is_file() and path.suffix.lower() == ".json":
        names = _json_class_names(path)
        if names is not None:
            return names, {}
        # otherwise an SSAST JSON manifest: read below
    elif path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        header = {c.strip().lower() for c in _read_csv_rows(path)[0][1]}
        # a CSV without a path column cannot be a manifest: read it as a class list (whose
        # errors then say which columns are missing)
        if {"index", "mid"} <= header or not header & set(_PATH_COLUMNS):
            return _read_class_labels_csv(path)
    manifest = read_manifest(path)
    if not manifest.labeled:
        raise ManifestError(f"{path}: no labels, so no class list")
    return list(manifest.classes), dict(manifest.display_names)


def _json_class_names(path: Path) -> list[str] | None:
    """The names of a ``classes.json``, or None when the JSON is something else (a manifest)."""
    obj = _read_json_value(path)
    if isinstance(obj, dict) and "classes" in obj:
        obj = obj["classes"]
    if isinstance(obj, list) and obj and all(isinstance(x, str) for x in obj):
        if len(set(obj)) != len(obj):
            dup = next(m for m, n in Counter(obj).items() if n > 1)
            raise ManifestError(f"{path}: duplicate class {dup!r}")
        return list(obj)
    return None


def _read_class_labels_csv(path: Path) -> tuple[list[str], dict[str, str]]:
    """An SSAST ``class_labels_indices.csv``: the mids in index order, ``mid -> display_name``."""
    rows = _read_csv_rows(path)
    header, body = rows[0][1], rows[1:]
    cols = {name.strip().lower(): k for k, name in enumerate(header)}
    missing = [c for c in ("index", "mid") if c not in cols]
    if missing:
        raise ManifestError(
            f"{path}: line 1: missing column(s) {', '.join(missing)} "
            f"(expected header index,mid,display_name)"
        )
    by_index: dict[int, tuple[str, str]] = {}
    for line, row in body:
        try:
            index = int(row[cols["index"]])
            mid = row[cols["mid"]].strip()
        except (IndexError, ValueError):
            raise ManifestError(f"{path}: line {line}: expected index,mid,display_name") from None
        name = row[cols["display_name"]].strip() if "display_name" in cols else mid
        if index in by_index:
            raise ManifestError(f"{path}: line {line}: duplicate index {index}")
        by_index[index] = (mid, name)
    if not by_index:
        raise ManifestError(f"{path}: no classes")
    mids = [by_index[k][0] for k in sorted(by_index)]
    if len(set(mids)) != len(mids):
        dup = next(m for m, n in Counter(mids).items() if n > 1)
        raise ManifestError(f"{path}: duplicate mid {dup!r}")
    return mids, {mid: name for mid, name in by_index.values()}

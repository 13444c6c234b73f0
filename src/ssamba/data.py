"""Data: manifests, data checks, dataset statistics, the training dataset, samplers and loaders.

Manifests (:func:`read_manifest` detects the format):

- SSAST JSON ``{"data": [{"wav": path, "labels": "mid1,mid2"}, ...]}`` whose labels are mids of a
  ``class_labels_indices.csv`` (``index,mid,display_name``) found next to the JSON or passed as
  ``classes``;
- CSV with a header ``path,label[,split]`` (``wav``/``labels`` are accepted as column names too);
  a label cell may hold several labels separated by ``;`` or ``,`` (quoted) -> multi-label;
- a folder per class: ``root/<class>/**/*.wav|flac|ogg|mp3|...``;
- unlabeled audio for pretraining: a folder of audio files (searched recursively) or a text file
  with one path per line; any labeled manifest can be read with ``ignore_labels=True`` too.

Relative paths resolve against the manifest's folder. Class order is deterministic: the order of the
``class_labels_indices.csv`` index, sorted names otherwise, or the ``classes`` passed in (so a test
set uses the training classes).

:class:`AudioDataset` yields dicts ``{"fbank": (T, 128) float32, "index": int, "skipped": int}``
plus ``"target": (C,) float32`` for labeled manifests; all of its randomness comes from a generator
seeded by ``(seed, epoch, index)``, so items do not depend on the worker count or access order.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssamba.constants import CLASS_LABELS_FILE
from ssamba.errors import ManifestError

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".au"}
    | {".wma", ".webm", ".mka", ".caf", ".w64", ".rf64", ".sph", ".nist"}
)
BAD_FILE_POLICIES = ("error", "skip")
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


# --------------------------------------------------------------------------------------------------
# Reading manifests


def read_class_labels(path: str | os.PathLike) -> tuple[list[str], dict[str, str]]:
    """Read an SSAST ``class_labels_indices.csv`` (``index,mid,display_name``).

    Returns the mids in index order and a ``mid -> display_name`` dict.
    """
    path = Path(path)
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


def read_manifest(
    path: str | os.PathLike,
    classes: Sequence[str] | str | os.PathLike | None = None,
    split: str | None = None,
    *,
    ignore_labels: bool = False,
    multilabel: bool | None = None,
) -> Manifest:
    """Read a manifest of any supported format (see the module docstring).

    Args:
        path: a ``.json`` (SSAST), ``.csv``/``.tsv``, text list of paths, or a folder.
        classes: the class list to use, in order (e.g. the training set's ``manifest.classes``),
            or the path of a ``class_labels_indices.csv``. A label not in it is an error. Default:
            the csv next to an SSAST JSON, else the sorted label names.
        split: keep only the examples of this split (CSV ``split`` column or JSON ``split`` key).
            Classes are computed before filtering, so every split of one file shares them.
        ignore_labels: read labels as absent (pretraining on a labeled set).
        multilabel: force the flag; default: True when some example has more than one label.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found")
    fmt = _detect_format(path)
    display: dict[str, str] = {}
    where: list[str]  # where each example comes from, for error messages
    if fmt == "folder":
        examples = _read_folder(path, ignore_labels)
        where = [str(ex.path) for ex in examples]
        if not examples[0].labels:
            fmt = "audio-folder"
    elif fmt == "json":
        examples, where = _read_json(path)
        if classes is None and not ignore_labels and (path.parent / CLASS_LABELS_FILE).is_file():
            classes = path.parent / CLASS_LABELS_FILE
    elif fmt == "csv":
        examples, where = _read_csv_manifest(path)
    else:
        examples, where = _read_list(path)

    if ignore_labels:
        examples = [Example(ex.path, (), ex.split) for ex in examples]
    labeled = any(ex.labels for ex in examples)
    if multilabel is None:  # decided on the whole file, so all its splits agree
        multilabel = any(len(ex.labels) > 1 for ex in examples)

    class_list: list[str] = []
    if labeled:
        if isinstance(classes, (str, os.PathLike)):
            class_list, display = read_class_labels(classes)
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

    if split is not None:
        splits = {ex.split for ex in examples}
        if splits == {None}:
            raise ManifestError(f"{path}: split {split!r} requested but the manifest has no splits")
        examples = [ex for ex in examples if ex.split == split]
        if not examples:
            names = ", ".join(sorted(s for s in splits if s is not None))
            raise ManifestError(f"{path}: no examples in split {split!r} (splits: {names})")
    if not examples:
        raise ManifestError(f"{path}: empty manifest (no examples)")

    manifest = Manifest(
        examples=examples,
        classes=class_list,
        multilabel=multilabel,
        source=path,
        format=fmt,
        display_names=display,
    )
    if labeled:
        empty = [
            c for c, n in zip(manifest.classes, manifest.class_counts(), strict=True) if n == 0
        ]
        if empty:
            shown = ", ".join(repr(c) for c in empty[:10]) + (" ..." if len(empty) > 10 else "")
            warnings.warn(
                f"{path}: {len(empty)} class(es) with no examples: {shown}",
                ManifestWarning,
                stacklevel=2,
            )
    return manifest


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
        raise ManifestError(
            f"{root}: no audio files found (extensions: {', '.join(sorted(AUDIO_EXTENSIONS))})"
        )
    top_level = [p for p in files if p.parent == root]
    if ignore_labels or top_level:
        # audio directly under the root: an unlabeled collection (searched recursively)
        return [Example(p) for p in files]
    return [Example(p, (p.relative_to(root).parts[0],)) for p in files]


def _read_json(path: Path) -> tuple[list[Example], list[str]]:
    try:
        obj = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise ManifestError(
            f"{path}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})"
        ) from None
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


def _read_csv_manifest(path: Path) -> tuple[list[Example], list[str]]:
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
# Checking data


@dataclass
class DataReport:
    """The result of :func:`check_data`. ``problems`` lists ``(path, problem)``; files at another
    sample rate are listed in ``resampled`` as ``(path, native_rate)`` and are not problems."""

    source: str | None
    sample_rate: int
    num_files: int = 0
    problems: list[tuple[Path, str]] = field(default_factory=list)
    resampled: list[tuple[Path, int]] = field(default_factory=list)
    sample_rates: dict[int, int] = field(default_factory=dict)
    total_seconds: float = 0.0
    min_seconds: float | None = None
    max_seconds: float | None = None
    num_classes: int = 0
    multilabel: bool = False

    @property
    def num_problems(self) -> int:
        return len(self.problems)

    @property
    def num_ok(self) -> int:
        return self.num_files - len({p for p, _ in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, max_listed: int = 50) -> str:
        lines = [f"manifest: {self.source}"] if self.source else []
        kind = (
            f"{self.num_classes} classes ({'multi-label' if self.multilabel else 'single-label'})"
            if self.num_classes
            else "unlabeled"
        )
        lines.append(
            f"files: {self.num_files} ({kind}); ok: {self.num_ok}; "
            f"with problems: {len({p for p, _ in self.problems})}"
        )
        if self.num_ok:
            lines.append(
                f"duration: {_hours(self.total_seconds)} in all, "
                f"{self.min_seconds:.2f} s to {self.max_seconds:.2f} s per file"
            )
        if self.sample_rates:
            rates = ", ".join(f"{r} Hz: {n}" for r, n in sorted(self.sample_rates.items()))
            lines.append(f"native sample rates: {rates}")
        if self.resampled:
            lines.append(
                f"{len(self.resampled)} file(s) will be resampled to {self.sample_rate} Hz"
            )
        if self.problems:
            lines.append("problems:")
            for p, problem in self.problems[:max_listed]:
                lines.append(f"  {p}: {problem}")
            if len(self.problems) > max_listed:
                lines.append(f"  ... and {len(self.problems) - max_listed} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)

    __str__ = summary

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "sample_rate": self.sample_rate,
            "num_files": self.num_files,
            "num_ok": self.num_ok,
            "num_problems": self.num_problems,
            "problems": [{"path": str(p), "problem": s} for p, s in self.problems],
            "resampled": [{"path": str(p), "native_rate": r} for p, r in self.resampled],
            "sample_rates": {str(k): v for k, v in sorted(self.sample_rates.items())},
            "total_seconds": self.total_seconds,
            "min_seconds": self.min_seconds,
            "max_seconds": self.max_seconds,
            "num_classes": self.num_classes,
            "multilabel": self.multilabel,
        }


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _native_rate(path: Path) -> int | None:
    import soundfile

    try:
        return int(soundfile.info(str(path)).samplerate)
    except Exception:  # formats libsndfile lacks are decoded by load_audio; rate unknown here
        return None


def check_data(
    manifest: Manifest | str | os.PathLike,
    sample_rate: int = 16000,
    min_seconds: float | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> DataReport:
    """Decode every file of ``manifest`` and report problems.

    Problems: missing file, undecodable, empty, NaN/inf samples, too short to make one fbank frame
    (or shorter than ``min_seconds``), unknown or missing label. Files whose native rate is not
    ``sample_rate`` are listed in ``report.resampled`` (not a problem). ``num_workers`` > 0 decodes
    in that many processes (same report).
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    report = DataReport(
        source=str(manifest.source) if manifest.source else None,
        sample_rate=sample_rate,
        num_files=len(manifest),
        num_classes=manifest.num_classes,
        multilabel=manifest.multilabel,
    )
    known = set(manifest.classes)
    durations = []
    rates: Counter[int] = Counter()
    results = _map_files(
        _inspect_file, manifest.paths(), (sample_rate,), num_workers, progress, "check-data"
    )
    for ex, (num_samples, native, problem) in zip(manifest.examples, results, strict=True):
        if manifest.labeled:
            if not ex.labels:
                report.problems.append((ex.path, "no label"))
            for name in ex.labels:
                if name not in known:
                    report.problems.append((ex.path, f"unknown label {name!r}"))
        if problem is not None:
            report.problems.append((ex.path, problem))
            continue
        if native is not None:
            rates[native] += 1
            if native != sample_rate:
                report.resampled.append((ex.path, native))
        seconds = num_samples / sample_rate
        if min_seconds is not None and seconds < min_seconds:
            report.problems.append(
                (ex.path, f"too short: {seconds:.3f} s (minimum {min_seconds:g} s)")
            )
            continue
        durations.append(seconds)
    report.sample_rates = dict(rates)
    if durations:
        report.total_seconds = float(sum(durations))
        report.min_seconds = float(min(durations))
        report.max_seconds = float(max(durations))
    return report


def _inspect_file(path: Path, sample_rate: int) -> tuple[int, int | None, str | None]:
    """(samples after resampling, native rate or None, problem or None) of one file."""
    from ssamba import audio

    if not path.is_file():
        return 0, None, "file not found"
    try:
        wave = audio.load_audio(path, sample_rate=sample_rate)
    except audio.AudioError as e:
        return 0, None, e.problem
    except Exception as e:  # anything load_audio did not anticipate is still a problem
        return 0, None, f"cannot load ({type(e).__name__}: {e})"
    n = wave.numel()
    if audio.num_frames(n) < 1:
        return (
            n,
            _native_rate(path),
            (f"too short: {n / sample_rate:.3f} s makes no 25 ms fbank frame"),
        )
    return n, _native_rate(path), None


class _FileMap(Dataset):
    def __init__(self, fn, paths, args):
        self.fn, self.paths, self.args = fn, paths, args

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        return self.fn(self.paths[k], *self.args)


def _identity(x):
    return x


def _map_files(fn, paths, args, num_workers: int, progress: bool, desc: str):
    """``fn(path, *args)`` for every path, in order, optionally in worker processes."""
    if num_workers > 0:
        it = DataLoader(
            _FileMap(fn, paths, args), batch_size=None, num_workers=num_workers,
            collate_fn=_identity,
        )  # fmt: skip
    else:
        it = (fn(p, *args) for p in paths)
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=len(paths), desc=desc, unit="file", dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# Dataset statistics


def compute_stats(
    manifest: Manifest | str | os.PathLike,
    target_length: int | None = None,
    progress: bool = True,
    on_bad_file: str = "error",
    sample_rate: int = 16000,
    num_workers: int = 0,
) -> dict:
    """Mean and std of the unnormalised fbank over all values (all frames x 128 bins) of a dataset.

    Exact and streaming: per-file sums and sums of squares in float64. With ``target_length`` every
    fbank is first padded (zeros) or cut to that many frames, as the training data loader does (the
    SSAST convention: the stats describe what the model sees). Returns
    ``{"mean", "std", "files", "frames", "skipped"}`` (population std). ``on_bad_file="skip"``
    leaves out (and logs) files that cannot be decoded; ``"error"`` raises AudioError.
    """
    from ssamba import audio

    _check_policy(on_bad_file)
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, ignore_labels=True)
    total = total_sq = 0.0
    frames = files = skipped = 0
    results = _map_files(
        _file_sums, manifest.paths(), (target_length, sample_rate), num_workers, progress, "stats"
    )
    for path, result in zip(manifest.paths(), results, strict=True):
        if isinstance(result, str):
            if on_bad_file == "error":
                raise audio.AudioError(path, result)
            log.warning("skipping %s: %s", path, result)
            skipped += 1
            continue
        s, sq, t = result
        total += s
        total_sq += sq
        frames += t
        files += 1
    if files == 0:
        raise ManifestError(f"{manifest.source}: no usable audio file to compute statistics")
    n = frames * audio.NUM_MEL_BINS
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    return {
        "mean": mean,
        "std": math.sqrt(var),
        "files": files,
        "frames": frames,
        "skipped": skipped,
    }


def _file_sums(
    path: Path, target_length: int | None, sample_rate: int
) -> tuple[float, float, int] | str:
    """(sum, sum of squares, frames) of one file's fbank in float64, or the problem."""
    from ssamba import audio

    try:
        wave = audio.load_audio(path, sample_rate=sample_rate)
        _check_length(path, wave, audio)
    except audio.AudioError as e:
        return e.problem
    fb = audio.fbank(wave, target_length=target_length, sample_rate=sample_rate).double()
    return float(fb.sum()), float((fb * fb).sum()), int(fb.shape[0])


def _check_policy(on_bad_file: str) -> None:
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ValueError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, got {on_bad_file!r}")


def _check_length(path: Path, wave: torch.Tensor, audio) -> None:
    if audio.num_frames(wave.numel()) < 1:
        raise audio.AudioError(path, f"too short ({wave.numel()} samples) to make one fbank frame")


# --------------------------------------------------------------------------------------------------
# Training dataset


def item_generator(seed: int, epoch: int, index: int, *salt: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, epoch, index, *salt)`` (all non-negative ints)."""
    entropy = [len(salt), int(seed), int(epoch), int(index), *map(int, salt)]
    words = np.random.SeedSequence(entropy)
    state = words.generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


class AudioDataset(Dataset):
    """Fbank features (and targets) for training or evaluation.

    Item ``i`` is a dict: ``"fbank"`` (T, 128) float32 normalised features, ``"index"`` (``i``),
    ``"skipped"`` (bad files skipped to produce this item; 0 normally) and, when the manifest is
    labeled, ``"target"`` (C,) float32 (one/multi-hot; mixed by mixup).

    Per item: load_audio -> mixup (train, probability ``mixup``: lambda ~ Beta(10, 10) with another
    random example, both waveforms mean-removed, the second zero-padded/cut to the first's length,
    targets mixed alike) -> fbank padded/cut to ``target_length`` -> SpecAugment (train, ``freqm``,
    ``timem``) -> normalise -> (train and ``noise``) ``fb + U(0,1) * r / 10``, r ~ U(0,1), then a
    time roll by an integer in [-10, 10). With ``train=False`` no augmentation is applied.

    All randomness comes from :func:`item_generator` ``(seed, epoch, index)``: call
    :meth:`set_epoch` before each epoch (before creating the loader's iterator).

    ``on_bad_file="skip"`` replaces an undecodable/empty/non-finite/too-short file by another
    example chosen deterministically, warns once per bad file (per process), and counts:
    ``item["skipped"]`` (sum it over batches: works with workers) and ``self.skipped`` (this
    process only). ``"error"`` (default) raises AudioError naming the file.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        target_length: int | None = 1024,
        normalize=None,
        *,
        train: bool = False,
        freqm: int = 0,
        timem: int = 0,
        mixup: float = 0.0,
        noise: bool = False,
        seed: int = 0,
        on_bad_file: str = "error",
        sample_rate: int = 16000,
        max_substitutions: int = 100,
    ) -> None:
        from ssamba import audio

        _check_policy(on_bad_file)
        if not 0.0 <= mixup <= 1.0:
            raise ValueError(f"mixup must be a probability in [0, 1], got {mixup}")
        if freqm < 0 or timem < 0:
            raise ValueError("freqm and timem must be >= 0")
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        if len(self.manifest) == 0:
            raise ManifestError(f"{self.manifest.source}: empty manifest")
        self.target_length = target_length
        self.stats = audio.normalize_stats(normalize)
        self.train = train
        self.freqm, self.timem, self.mixup, self.noise = freqm, timem, mixup, noise
        self.seed = int(seed)
        self.epoch = 0
        self.on_bad_file = on_bad_file
        self.sample_rate = sample_rate
        self.max_substitutions = max_substitutions
        self.skipped = 0
        self.bad_files: dict[Path, str] = {}

    def __len__(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def labeled(self) -> bool:
        return self.manifest.labeled

    # -- loading with the bad-file policy
    def _load(self, i: int, salt: int) -> tuple[int, torch.Tensor, int]:
        """Waveform of example ``i`` or, under the skip policy, of a deterministic substitute.

        Returns (index actually used, waveform, number of bad files skipped)."""
        from ssamba import audio

        skipped = 0
        for attempt in range(self.max_substitutions + 1):
            path = self.manifest.examples[i].path
            if path not in self.bad_files:
                try:
                    wave = audio.load_audio(path, sample_rate=self.sample_rate)
                    _check_length(path, wave, audio)
                    return i, wave, skipped
                except audio.AudioError as e:
                    if self.on_bad_file == "error":
                        raise
                    self.bad_files[path] = e.problem
                    log.warning("skipping bad audio file %s (a substitute is used)", e)
            elif self.on_bad_file == "error":  # pragma: no cover - cache only filled when skipping
                raise audio.AudioError(path, self.bad_files[path])
            skipped += 1
            self.skipped += 1
            if len(self.manifest) < 2:
                break
            g = item_generator(self.seed, self.epoch, i, 1000 + salt, attempt)
            j = int(torch.randint(len(self.manifest) - 1, (), generator=g))
            i = j + 1 if j >= i else j  # any other example
        raise RuntimeError(
            f"{skipped} bad audio file(s) in a row while skipping ({len(self.bad_files)} known "
            f"bad of {len(self.manifest)}): check the data with `ssamba check-data`"
        )

    def _target(self, i: int) -> torch.Tensor | None:
        return self.manifest.targets(i) if self.labeled else None

    def __getitem__(self, index: int) -> dict:
        from ssamba import audio

        index = int(index)
        if index < 0:
            index += len(self)
        g = item_generator(self.seed, self.epoch, index)
        i, wave, skipped = self._load(index, 0)
        target = self._target(i)

        if self.train and self.mixup > 0 and _uniform(g) < self.mixup:
            j = int(torch.randint(len(self.manifest), (), generator=g))
            lam = _beta(g, 10.0, 10.0)
            j, wave2, skipped2 = self._load(j, 1)
            skipped += skipped2
            w1 = wave - wave.mean()
            w2 = wave2 - wave2.mean()
            w2 = _pad_or_cut_1d(w2, w1.numel())
            wave = lam * w1 + (1.0 - lam) * w2
            if target is not None:
                target = lam * target + (1.0 - lam) * self._target(j)

        fb = audio.fbank(wave, target_length=self.target_length, sample_rate=self.sample_rate)
        if self.train and (self.freqm > 0 or self.timem > 0):
            fb = audio.spec_augment(fb, self.freqm, self.timem, generator=g)
        if self.stats is not None:
            fb = audio.normalize_fbank(fb, *self.stats)
        if self.train and self.noise:
            r = _uniform(g)
            fb = fb + torch.rand(fb.shape, generator=g) * r / 10
            shift = int(torch.randint(-10, 10, (), generator=g))
            fb = torch.roll(fb, shift, 0)

        item = {"fbank": fb.to(torch.float32).contiguous(), "index": index, "skipped": skipped}
        if target is not None:
            item["target"] = target.to(torch.float32)
        return item


def _beta(g: torch.Generator, a: float, b: float) -> float:
    """Beta(a, b) driven by ``g`` (torch's Beta sampler takes no generator)."""
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=g)))
    return float(rng.beta(a, b))


def _pad_or_cut_1d(w: torch.Tensor, n: int) -> torch.Tensor:
    if w.numel() >= n:
        return w[:n]
    return torch.nn.functional.pad(w, (0, n - w.numel()))


# --------------------------------------------------------------------------------------------------
# Sampling and loading


def class_balanced_weights(manifest: Manifest) -> torch.Tensor:
    """Per-example weights for class-balanced sampling: the sum over an example's labels of
    1 / (number of examples with that label) — 1/frequency of its class when single-label."""
    if not manifest.labeled:
        raise ValueError("class-balanced sampling needs a labeled manifest")
    counts = manifest.class_counts()
    w = torch.zeros(len(manifest), dtype=torch.float64)
    for k in range(len(manifest)):
        w[k] = sum(1.0 / counts[c] for c in manifest.label_indices(k))
    return w


class EpochSampler(Sampler[int]):
    """Deterministic per-(seed, epoch) order, sharded like DistributedSampler.

    Without weights: a permutation (or ``range`` when ``shuffle=False``) padded by repeating its
    start to a multiple of ``world_size``; rank ``r`` takes positions ``r, r + world_size, ...``.
    With weights: ``num_samples`` (default: dataset size, rounded up to a multiple of
    ``world_size``) indices drawn with replacement proportionally to the weights, then sharded.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        weights: torch.Tensor | Sequence[float] | None = None,
        num_samples: int | None = None,
    ) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.n, self.seed, self.epoch = n, int(seed), int(epoch)
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"weights must be {n} finite non-negative numbers, not all zero")
            self.weights = w
        total = num_samples if num_samples is not None else n
        self.total_size = math.ceil(total / world_size) * world_size
        self.num_samples = self.total_size // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> list[int]:
        """The whole epoch's order (all ranks, padded), before sharding."""
        g = item_generator(self.seed, self.epoch, 0, 7)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
            return idx.tolist()
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        order = order.tolist()
        if len(order) < self.total_size:
            reps = math.ceil(self.total_size / len(order))
            order = (order * reps)[: self.total_size]
        return order[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank : self.total_size : self.world_size])

    def __len__(self) -> int:
        return self.num_samples


def make_sampler(
    dataset_or_len: Dataset | Manifest | int,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    balanced: bool = False,
    weights: torch.Tensor | Sequence[float] | None = None,
    num_samples: int | None = None,
) -> EpochSampler:
    """An :class:`EpochSampler` for a dataset (an :class:`AudioDataset`, a Manifest or a length).

    ``balanced=True`` draws with replacement with weights ∝ 1/class frequency (needs labels);
    ``weights`` gives explicit per-example weights instead.
    """
    if isinstance(dataset_or_len, int):
        n, manifest = dataset_or_len, None
    else:
        n = len(dataset_or_len)
        manifest = (
            dataset_or_len
            if isinstance(dataset_or_len, Manifest)
            else getattr(dataset_or_len, "manifest", None)
        )
    if balanced:
        if weights is not None:
            raise ValueError("pass either balanced=True or weights, not both")
        if manifest is None:
            raise ValueError("balanced sampling needs a dataset with a labeled manifest")
        weights = class_balanced_weights(manifest)
    return EpochSampler(n, seed, epoch, rank, world_size, shuffle, weights, num_samples)


def make_loader(
    dataset: AudioDataset,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    shuffle: bool = True,
    balanced: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` with an :class:`EpochSampler` (seed: the dataset's seed).

    Call :func:`set_epoch` ``(loader, epoch)`` before each epoch: it sets the epoch of both the
    sampler and the dataset. Workers are not persistent, so each epoch's workers see the new epoch.
    """
    seed = getattr(dataset, "seed", 0) if seed is None else seed
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = make_sampler(dataset, seed, epoch, rank, world_size, shuffle, balanced)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of a loader's sampler and dataset (both drive the randomness)."""
    for obj in (loader.sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)

"""The official pretraining data: AudioSet-2M and LibriSpeech 960 h, and their mix.

``ssamba prepare audioset-unbalanced SRC -o DIR``, ``ssamba prepare librispeech SRC -o DIR`` and
``ssamba prepare pretrain-mix AUDIOSET_DIR LIBRISPEECH_DIR -o DIR`` (docs/pretraining.md, "The
official pretraining data"). Each writes ``train.csv`` (``path,split``: unlabelled, as
pretraining reads it; ``split`` names where a clip comes from) and ``prepare.json`` (counts,
missing files, notes).

- AudioSet: ``unbalanced_train_segments.csv`` (and ``balanced_train_segments.csv`` when present:
  the two together are AudioSet-2M, the paper's set) with the clips downloaded anywhere below
  ``SRC``, named by YouTube id as for ``ssamba prepare audioset``. Clips are 10 s already.
- LibriSpeech: ``LibriSpeech/{train-clean-100,train-clean-360,train-other-500}/<spk>/<chapter>/
  <spk>-<chapter>-<utt>.flac`` (+ ``.trans.txt``, not needed). Utterances are cut into clips of
  ``seconds`` (10) written as FLAC under ``DIR/clips/`` (the manifest format has no offsets); a
  last piece shorter than ``min_seconds`` (1 s) is dropped, a shorter utterance kept whole
  (pretraining pads clips to 1024 frames). Clips already written are kept, so an interrupted run
  continues where it stopped.
- The mix: both ``train.csv`` lists in one, ``split`` = ``audioset`` or ``librispeech``; ``valid``
  clips drawn at random (seeded) are held out into ``valid.csv`` for ``ssamba pretrain --valid``.
"""

from __future__ import annotations

import math
import os
import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from ssamba.data import read_manifest
from ssamba.errors import ManifestError, PrepareError
from ssamba.fileio import atomic_write, atomic_write_csv, atomic_write_json, atomic_write_text
from ssamba.recipes.prepare import (
    Item,
    PrepareWarning,
    _path_text,
    _youtube_index,
    read_segments,
)

PRETRAIN_TASKS = ("audioset_unbalanced", "librispeech", "pretrain_mix")
LIBRISPEECH_960 = ("train-clean-100", "train-clean-360", "train-other-500")
CLIPS = "clips"


@dataclass
class PretrainDataResult:
    """What a pretraining-data command wrote (``summary()`` describes it)."""

    task: str
    sources: list[Path]
    out: Path
    counts: dict[str, int]  # split -> clips
    missing: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.task}: {', '.join(map(str, self.sources))} -> {self.out}"]
        for split, n in self.counts.items():
            lines.append(f"  {split:<16} {n:>8} clips")
        lines.append(f"  {'total':<16} {sum(self.counts.values()):>8} clips  train.csv")
        lines.extend(f"missing ({k}): {n}" for k, n in self.missing.items() if n)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "sources": [str(s) for s in self.sources],
            "counts": self.counts,
            "total": sum(self.counts.values()),
            "missing": self.missing,
            "notes": self.notes,
        }


def pretrain_task(task: str) -> str | None:
    """The pretraining-data task ``task`` names (``-`` or ``_``), or None for another task."""
    key = str(task).strip().lower().replace("-", "_")
    return key if key in PRETRAIN_TASKS else None


def _root_with(source: str | os.PathLike, marker: str, what: str) -> Path:
    """``source`` if ``marker`` is in it, else its one subfolder holding it."""
    source = Path(source).expanduser().resolve()
    if not source.is_dir():
        raise PrepareError(f"{source}: not a folder")
    if (source / marker).exists():
        return source
    subs = [p for p in source.iterdir() if p.is_dir() and (p / marker).exists()]
    if len(subs) == 1:
        return subs[0]
    raise PrepareError(f"{source / marker} not found: {source} does not look like {what}")


def _finish(out: Path, rows: list[Item], result: PretrainDataResult, relative: bool) -> None:
    """``train.csv`` (``path,split``) and ``prepare.json``."""
    lines = ([_path_text(it.path, out, relative), it.split] for it in rows)
    atomic_write_csv(out / "train.csv", ["path", "split"], lines)
    atomic_write_json(out / "prepare.json", result.to_dict())


# ---------------------------------------------------------------------------- AudioSet
def prepare_audioset_unbalanced(
    source: str | os.PathLike, out: str | os.PathLike, *, relative: bool = False
) -> PretrainDataResult:
    """AudioSet's unbalanced (+ balanced, when its CSV is there) training clips -> ``train.csv``;
    ids not found go to ``missing_<split>.txt``. Labels are not checked (pretraining reads
    none)."""
    root = _root_with(source, "unbalanced_train_segments.csv", "AudioSet (unbalanced_train_"
                      "segments.csv and the clips named by YouTube id)")  # fmt: skip
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    index = _youtube_index(root)
    splits = {"unbalanced": root / "unbalanced_train_segments.csv"}
    if (root / "balanced_train_segments.csv").exists():
        splits["balanced"] = root / "balanced_train_segments.csv"
    rows, counts, missing, taken = [], {}, {}, set()
    for split, path in splits.items():
        found, lost = read_segments(path, split, index)
        found = [it for it in found if it.path not in taken]  # an id in both lists: once
        taken.update(it.path for it in found)
        rows += found
        counts[split], missing[split] = len(found), len(lost)
        if lost:
            atomic_write_text(out / f"missing_{split}.txt", "\n".join(lost) + "\n")
    if not rows:
        raise PrepareError(f"{root}: none of the listed clips was found")
    notes = []
    if "balanced" not in splits:
        notes.append("no balanced_train_segments.csv: AudioSet-2M is balanced + unbalanced")
    if any(missing.values()):
        msg = f"{sum(missing.values())} listed clips were not found (see missing_<split>.txt)"
        notes.append(msg)
        warnings.warn(msg, PrepareWarning, stacklevel=2)
    result = PretrainDataResult("audioset_unbalanced", [root], out, counts, missing, notes)
    _finish(out, rows, result, relative)
    return result


# ---------------------------------------------------------------------------- LibriSpeech
def cut_clips(
    path: Path, target: Path, seconds: float = 10.0, min_seconds: float = 1.0
) -> list[Path]:
    """Cut one recording into ``target_00.flac``, ``target_01.flac``, ... of ``seconds`` each
    (the last piece kept if at least ``min_seconds``; a shorter recording kept whole), reading
    one piece at a time. Pieces already there are complete (atomic writes) and kept."""
    try:
        info = soundfile.info(str(path))
    except RuntimeError as e:
        raise PrepareError(f"{path}: unreadable ({e})") from None
    rate, frames = info.samplerate, info.frames
    size = int(round(seconds * rate))
    count = max(1, math.ceil(frames / size))
    if count > 1 and frames - (count - 1) * size < min_seconds * rate:
        count -= 1  # a short tail is dropped (the recording itself is not)
    clips = []
    for k in range(count):
        clip = target.with_name(f"{target.name}_{k:02d}.flac")
        if not clip.exists():
            data, _ = soundfile.read(str(path), start=k * size, frames=size, always_2d=False)
            clip.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(clip, lambda tmp, d=data: soundfile.write(tmp, d, rate, format="FLAC"))
        clips.append(clip)
    return clips


def _librispeech_root(source: str | os.PathLike) -> Path:
    """The folder holding the train-* subsets (``SRC``, ``SRC/LibriSpeech`` or one subfolder)."""
    source = Path(source).expanduser().resolve()
    for candidate in (source, source / "LibriSpeech"):
        if any((candidate / s).is_dir() for s in LIBRISPEECH_960):
            return candidate
    return _root_with(source, "LibriSpeech", "LibriSpeech (LibriSpeech/train-clean-100/...)") / (
        "LibriSpeech"
    )


def prepare_librispeech(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    seconds: float = 10.0,
    min_seconds: float = 1.0,
    workers: int = 1,
    relative: bool = False,
) -> PretrainDataResult:
    """LibriSpeech 960 h cut into ``seconds`` clips under ``out/clips`` -> ``train.csv``."""
    if not 0 < min_seconds <= seconds:
        raise PrepareError(f"need 0 < min_seconds <= seconds, got {min_seconds}, {seconds}")
    root = _librispeech_root(source)
    out = Path(out).expanduser().resolve()
    present = [s for s in LIBRISPEECH_960 if (root / s).is_dir()]
    if not present:
        raise PrepareError(f"{root}: none of {', '.join(LIBRISPEECH_960)} found")
    jobs = [
        (flac, out / CLIPS / flac.relative_to(root).with_suffix(""), subset)
        for subset in present
        for flac in sorted((root / subset).glob("*/*/*.flac"))
        if not flac.name.startswith(".")
    ]
    if not jobs:
        raise PrepareError(f"{root}: no .flac in <subset>/<speaker>/<chapter>/")
    with ThreadPoolExecutor(max(1, workers)) as pool:  # libsndfile leaves the GIL
        pieces = list(pool.map(lambda j: cut_clips(j[0], j[1], seconds, min_seconds), jobs))
    rows = [
        Item(c, (), subset) for (_, _, subset), cs in zip(jobs, pieces, strict=True) for c in cs
    ]
    counts = {s: sum(1 for it in rows if it.split == s) for s in present}
    notes = [f"{len(jobs)} utterances cut into {len(rows)} clips of at most {seconds:g} s"]
    absent = [s for s in LIBRISPEECH_960 if s not in present]
    if absent:
        msg = f"not found: {', '.join(absent)} (LibriSpeech 960 h has all three)"
        notes.append(msg)
        warnings.warn(msg, PrepareWarning, stacklevel=2)
    result = PretrainDataResult("librispeech", [root], out, counts, {}, notes)
    _finish(out, rows, result, relative)
    return result


# ---------------------------------------------------------------------------- the mix
def _prepared_list(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser().resolve()
    path = path / "train.csv" if path.is_dir() else path
    if not path.is_file():
        raise PrepareError(f"{path} not found: give a folder written by `ssamba prepare`")
    return path


def mix_pretraining(
    audioset: str | os.PathLike,
    librispeech: str | os.PathLike,
    out: str | os.PathLike,
    *,
    valid: int = 0,
    seed: int = 0,
    relative: bool = False,
) -> PretrainDataResult:
    """The official pretraining list: the clips of both prepared folders (or their
    ``train.csv``) in ``train.csv``, ``split`` = their source; ``valid`` of them (seeded draw)
    in ``valid.csv`` instead."""
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows, lists = [], []
    for name, source in (("audioset", audioset), ("librispeech", librispeech)):
        path = _prepared_list(source)
        lists.append(path)
        try:
            manifest = read_manifest(path, ignore_labels=True)
        except ManifestError as e:
            raise PrepareError(str(e)) from None
        rows += [Item(Path(ex.path), (), name) for ex in manifest.examples]
    if not 0 <= valid < len(rows):
        raise PrepareError(f"valid must be between 0 and {len(rows) - 1} clips, got {valid}")
    held = set(random.Random(seed).sample(range(len(rows)), valid))
    train = [it for k, it in enumerate(rows) if k not in held]
    counts = {
        name: sum(1 for it in train if it.split == name) for name in ("audioset", "librispeech")
    }
    notes = ["the official mix: AudioSet-2M + LibriSpeech 960 h in 10-s clips (~2.3M clips)"]
    if valid:
        held_out = [it for k, it in enumerate(rows) if k in held]
        lines = ([_path_text(it.path, out, relative), it.split] for it in held_out)
        atomic_write_csv(out / "valid.csv", ["path", "split"], lines)
        notes.append(f"{valid} clips held out in valid.csv (seed {seed})")
    result = PretrainDataResult("pretrain_mix", lists, out, counts, {}, notes)
    _finish(out, train, result, relative)
    return result


__all__ = [
    "LIBRISPEECH_960",
    "PRETRAIN_TASKS",
    "PretrainDataResult",
    "cut_clips",
    "mix_pretraining",
    "prepare_audioset_unbalanced",
    "prepare_librispeech",
    "pretrain_task",
]

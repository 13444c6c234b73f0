"""``prepare``: a dataset in its official layout (extracted, as its authors distribute it) ->
manifests. Nothing is downloaded and no audio is converted (``load_audio`` resamples on the fly).

Layouts (``SOURCE_DIR`` may also be the folder that contains the single extracted top folder):

- ``esc50``: ``audio/*.wav`` + ``meta/esc50.csv`` (filename,fold,target,category,...);
  5 folds -> ``fold{k}_train`` / ``fold{k}_eval``.
- ``speechcommands_v2`` / ``speechcommands_v1``: ``<word>/*.wav``, ``validation_list.txt``,
  ``testing_list.txt`` (``_background_noise_`` is not a class and is left out); training = every
  other file -> ``train`` / ``valid`` / ``test``. v2 has 35 words, v1 30.
- ``audioset``: ``balanced_train_segments.csv``, ``eval_segments.csv``,
  ``class_labels_indices.csv`` and the audio files already downloaded, anywhere below
  ``SOURCE_DIR``, named by YouTube id (``<id>.wav``, ``Y<id>.wav``, ``<id>_<start>...``) ->
  ``train`` / ``eval``; files not found are reported and listed in ``missing_<split>.txt``.
- ``voxceleb1``: ``iden_split.txt`` + ``wav/idXXXXX/<video>/<utt>.wav`` (or ``vox1_dev_wav/wav``
  and ``vox1_test_wav/wav``) -> ``train`` (1) / ``valid`` (2) / ``test`` (3).
- ``iemocap``: ``Session{1..5}/sentences/wav/<dialog>/<utt>.wav`` and
  ``Session{n}/dialog/EmoEvaluation/<dialog>.txt``; 4 classes (neu, hap = hap + exc, ang, sad);
  leave-one-session-out -> ``fold{k}_train`` / ``fold{k}_eval``.
- ``urbansound8k``: ``audio/fold{1..10}/*.wav`` + ``metadata/UrbanSound8K.csv``; 10 folds.

Outputs in ``out``: one manifest per split or fold (CSV ``path,label`` with ``;`` between labels,
and/or SSAST JSON ``{"data": [{"wav", "labels"}]}``), ``all.csv`` (``path,label,split``: every file
once, ``split`` = its split or fold; ``read_manifest(all.csv, split=...)``),
``class_labels_indices.csv`` (``index,mid,display_name``; ``mid`` is the label used in the
manifests), and ``prepare.json`` (counts, missing files, native sample rates).
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from ssamba.constants import AUDIO_EXTENSIONS, CLASS_LABELS_FILE
from ssamba.data import read_class_list
from ssamba.errors import ManifestError, PrepareError, RecipeError
from ssamba.fileio import atomic_write_csv, atomic_write_json, atomic_write_text
from ssamba.recipes import load_recipe, recipe_name

SC_V1_WORDS = (
    "bed bird cat dog down eight five four go happy house left marvin nine no off on one right "
    "seven sheila six stop three tree two up wow yes zero"
).split()
SC_V2_ONLY = ["backward", "follow", "forward", "learn", "visual"]
SC_V2_WORDS = sorted(SC_V1_WORDS + SC_V2_ONLY)
IEMOCAP_MAP = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
IEMOCAP_CLASSES = ["neu", "hap", "ang", "sad"]
_MAX_LISTED = 10


class PrepareWarning(UserWarning):
    """Something incomplete but usable (missing files, missing classes)."""


@dataclass
class Item:
    path: Path
    labels: tuple[str, ...]
    split: str


@dataclass
class Dataset:
    """What a layout reader returns: every item with its split, the class list, the manifests to
    write (name -> the splits they hold) and notes."""

    items: list[Item]
    classes: list[str]
    display: dict[str, str]
    manifests: dict[str, set[str]]
    missing: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    layout: str = ""  # the layout id, set by read_dataset
    root: Path | None = None  # the folder the layout was found in, set by read_dataset


@dataclass
class PrepareResult:
    task: str
    source: Path
    out: Path
    files: dict[str, Path]  # manifest name -> path (the first format when both)
    counts: dict[str, int]
    num_classes: int
    missing: dict[str, list[str]]
    sample_rates: dict[int, int]
    rates_checked: int
    notes: list[str]

    def summary(self) -> str:
        lines = [f"{self.task}: {self.source} -> {self.out}", f"classes: {self.num_classes}"]
        width = max(len(n) for n in self.counts)
        for name, n in self.counts.items():
            lines.append(f"  {name:<{width}}  {n:>7} files  {self.files[name].name}")
        for split, ids in self.missing.items():
            if ids:
                shown = ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")
                lines.append(f"missing ({split}): {len(ids)} ({shown})")
        if self.rates_checked:
            rates = ", ".join(f"{r} Hz: {n}" for r, n in sorted(self.sample_rates.items()))
            lines.append(f"native sample rates ({self.rates_checked} files checked): {rates}")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Entry point


def prepare(
    task: str,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "csv",
    relative: bool = False,
    rate_sample: int = 200,
) -> PrepareResult:
    """Write the manifests of ``task`` (a recipe name or a layout id) for the dataset at ``source``
    into ``out``; returns a :class:`PrepareResult` (``.summary()`` describes it).

    The two steps are :func:`read_dataset` (checks the layout, writes nothing) and
    :func:`write_manifests`."""
    data = read_dataset(task, source)
    return write_manifests(data, out, format=format, relative=relative, rate_sample=rate_sample)


def read_dataset(task: str, source: str | os.PathLike) -> Dataset:
    """Every item of the dataset at ``source`` in ``task``'s layout, with its split; raises
    :class:`PrepareError` naming the missing or malformed file. Writes nothing."""
    layout = _layout(task)
    source = Path(source).expanduser().resolve()
    if not source.is_dir():
        raise PrepareError(f"{source}: not a folder")
    reader, marker = LAYOUTS[layout]
    root = _find_root(source, marker, layout)
    data = reader(root)
    if not any(it.split for it in data.items):
        raise PrepareError(f"{root}: no audio files found for {layout}")
    data.layout, data.root = layout, root
    return data


def write_manifests(
    data: Dataset,
    out: str | os.PathLike,
    *,
    format: str = "csv",
    relative: bool = False,
    rate_sample: int = 200,
) -> PrepareResult:
    """Write the manifests of ``data`` (from :func:`read_dataset`) into ``out`` (see the module
    docstring); ``rate_sample`` files are probed for their native sample rate (0: none)."""
    if format not in ("csv", "json", "both"):
        raise PrepareError(f"format must be csv, json or both, not {format!r}")
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    counts: dict[str, int] = {}
    for name, splits in data.manifests.items():
        rows = [it for it in data.items if it.split in splits]
        if rows:
            files[name] = _write_manifest(out, name, rows, format, relative)
            counts[name] = len(rows)
    _write_all(out, data.items, relative)
    _write_class_labels(out / CLASS_LABELS_FILE, data.classes, data.display)
    for split, ids in data.missing.items():
        if ids:
            atomic_write_text(out / f"missing_{split}.txt", "\n".join(ids) + "\n")
    rates, checked = _sample_rates([it.path for it in data.items], rate_sample)
    result = PrepareResult(
        task=data.layout,
        source=data.root,
        out=out,
        files=files,
        counts=counts,
        num_classes=len(data.classes),
        missing=data.missing,
        sample_rates=rates,
        rates_checked=checked,
        notes=data.notes,
    )
    atomic_write_json(out / "prepare.json", _report(result, relative))
    return result


def _report(result: PrepareResult, relative: bool) -> dict:
    """What ``prepare.json`` records."""
    return {
        "task": result.task,
        "source": str(result.source),
        "manifests": {k: str(v) for k, v in result.files.items()},
        "counts": result.counts,
        "num_classes": result.num_classes,
        "missing": {k: len(v) for k, v in result.missing.items()},
        "sample_rates": {str(k): v for k, v in sorted(result.sample_rates.items())},
        "rates_checked": result.rates_checked,
        "paths": "relative" if relative else "absolute",
        "notes": result.notes,
    }


def _layout(task: str) -> str:
    key = str(task).strip().lower().replace("-", "_")
    if key in LAYOUTS:
        return key
    try:
        return load_recipe(recipe_name(key))["prepare"]
    except RecipeError:
        raise PrepareError(
            f"unknown task {task!r}; tasks: {', '.join(sorted(LAYOUTS))} (or a recipe name); "
            "pretraining data: audioset-unbalanced, librispeech, pretrain-mix"
        ) from None


def _find_root(source: Path, marker: str, layout: str) -> Path:
    """``source`` if ``marker`` is in it, else its one subfolder that has it."""
    if (source / marker).exists():
        return source
    subs = [p for p in source.iterdir() if p.is_dir() and (p / marker).exists()]
    if len(subs) == 1:
        return subs[0]
    raise PrepareError(
        f"{source / marker} not found: {source} does not look like the {layout} layout "
        f"({LAYOUT_HELP[layout]})"
    )


def _need(path: Path, layout: str) -> Path:
    if not path.exists():
        raise PrepareError(f"{path} not found ({layout} layout: {LAYOUT_HELP[layout]})")
    return path


def _read_csv(path: Path, required: Iterable[str], layout: str) -> list[dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PrepareError(f"{path}: unreadable ({e})") from None
    reader = csv.DictReader(io.StringIO(text), skipinitialspace=True)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
        raise PrepareError(
            f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(header)}; "
            f"{layout} layout: {LAYOUT_HELP[layout]})"
        )
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _missing_note(missing: dict[str, list[str]], what: str, notes: list[str]) -> None:
    total = sum(len(v) for v in missing.values())
    if total:
        msg = f"{total} {what} listed in the metadata were not found (see missing_<split>.txt)"
        notes.append(msg)
        warnings.warn(msg, PrepareWarning, stacklevel=3)


def _folds(k_list: list[str]) -> dict[str, set[str]]:
    manifests = {}
    for k in k_list:
        manifests[f"{k}_train"] = {f for f in k_list if f != k}
        manifests[f"{k}_eval"] = {k}
    return manifests


# --------------------------------------------------------------------------------------------------
# Layout readers


def _read_esc50(root: Path) -> Dataset:
    layout = "esc50"
    meta = _need(root / "meta" / "esc50.csv", layout)
    audio = _need(root / "audio", layout)
    rows = _read_csv(meta, ("filename", "fold", "target", "category"), layout)
    by_target: dict[int, str] = {}
    items, missing = [], []
    for line, row in enumerate(rows, start=2):
        try:
            target, fold = int(row["target"]), int(row["fold"])
        except ValueError:
            raise PrepareError(f"{meta}: line {line}: fold and target must be integers") from None
        if by_target.setdefault(target, row["category"]) != row["category"]:
            raise PrepareError(f"{meta}: line {line}: target {target} has two categories")
        path = audio / row["filename"]
        if not path.is_file():
            missing.append(row["filename"])
            continue
        items.append(Item(path, (row["category"],), f"fold{fold}"))
    classes = [by_target[t] for t in sorted(by_target)]
    folds = sorted({it.split for it in items}, key=lambda s: int(s[4:]))
    data = Dataset(items, classes, {}, _folds(folds), {"all": missing})
    _missing_note(data.missing, "files", data.notes)
    if len(folds) != 5:
        data.notes.append(f"{len(folds)} folds found (the official ESC-50 has 5)")
    return data


def _read_speechcommands(root: Path, layout: str) -> Dataset:
    v2 = layout == "speechcommands_v2"
    words = SC_V2_WORDS if v2 else sorted(SC_V1_WORDS)
    lists = {
        "valid": _need(root / "validation_list.txt", layout),
        "test": _need(root / "testing_list.txt", layout),
    }
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found_words = [d for d in dirs if not d.startswith("_")]
    extra_v2 = [w for w in found_words if w in SC_V2_ONLY]
    if not v2 and extra_v2:
        raise PrepareError(
            f"{root} has the v0.02 words {', '.join(extra_v2)}: this is Speech Commands v2, "
            f"prepare it as speechcommands_v2"
        )
    if v2 and found_words and not extra_v2:
        raise PrepareError(
            f"{root} has none of the v0.02-only words ({', '.join(SC_V2_ONLY)}): this looks "
            f"like Speech Commands v1, prepare it as speechcommands_v1"
        )
    unknown = [w for w in found_words if w not in words]
    notes = []
    if unknown:
        notes.append(f"folders that are not {layout} words were left out: {', '.join(unknown)}")
    absent = [w for w in words if w not in found_words]
    if absent:
        msg = f"{len(absent)} of the {len(words)} words have no folder: {', '.join(absent[:10])}"
        notes.append(msg)
        warnings.warn(msg, PrepareWarning, stacklevel=3)
    split_of: dict[str, str] = {}
    missing: dict[str, list[str]] = {"valid": [], "test": []}
    for split, path in lists.items():
        for line in path.read_text(encoding="utf-8").splitlines():
            rel = line.strip()
            if not rel:
                continue
            if rel.split("/")[0] not in words:
                continue
            split_of[rel] = split
            if not (root / rel).is_file():
                missing[split].append(rel)
    items = []
    for w in words:
        if w not in found_words:
            continue
        for p in sorted((root / w).iterdir()):
            if p.suffix.lower() == ".wav" and p.is_file() and not p.name.startswith("."):
                rel = f"{w}/{p.name}"
                items.append(Item(p, (w,), split_of.get(rel, "train")))
    if (root / "_background_noise_").is_dir():
        n = sum(1 for p in (root / "_background_noise_").glob("*.wav"))
        notes.append(f"_background_noise_ ({n} recordings) is not a class: left out")
    data = Dataset(
        items,
        words,
        {},
        {"train": {"train"}, "valid": {"valid"}, "test": {"test"}},
        missing,
        notes,
    )
    _missing_note(missing, "files", notes)
    return data


def _youtube_index(root: Path) -> dict[str, list[Path]]:
    """Audio files below ``root`` by candidate YouTube id (11 characters)."""
    index: dict[str, list[Path]] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            stem, ext = os.path.splitext(name)
            if ext.lower() not in AUDIO_EXTENSIONS or name.startswith("."):
                continue
            path = Path(dirpath) / name
            keys = {stem[:11]}
            if stem.startswith("Y"):
                keys.add(stem[1:12])
            for key in keys:
                index.setdefault(key, []).append(path)
    return index


def _match_youtube(ytid: str, index: dict[str, list[Path]]) -> Path | None:
    best = None
    for path in index.get(ytid, ()):
        stem = path.stem
        for prefix in ("", "Y"):
            if stem == prefix + ytid:
                return path
            if stem.startswith(prefix + ytid) and stem[len(prefix) + 11] in "_-. ":
                best = best or path
    return best


def read_segments(
    path: Path,
    split: str,
    index: dict[str, list[Path]],
    known: set[str] | None = None,
    classes_name: str = CLASS_LABELS_FILE,
) -> tuple[list[Item], list[str]]:
    """The clips of an AudioSet segments CSV (``YTID, start_seconds, end_seconds,
    "positive_labels"``, ``#`` comments) found in ``index`` (:func:`_youtube_index`), each id
    once, and the ids not found. Labels are checked against ``known`` unless it is None."""
    items, missing, seen = [], [], set()
    text = path.read_text(encoding="utf-8-sig")
    lines = [(k, ln) for k, ln in enumerate(text.splitlines(), 1) if not ln.startswith("#")]
    reader = csv.reader((ln for _, ln in lines), skipinitialspace=True)
    for (lineno, _), row in zip(lines, reader, strict=True):
        if not row or not row[0].strip():
            continue
        if len(row) < 4:
            raise PrepareError(
                f"{path}: line {lineno}: expected YTID, start_seconds, end_seconds, "
                f'"positive_labels"'
            )
        ytid = row[0].strip()
        labels = tuple(m.strip() for m in row[3].split(",") if m.strip())
        bad = [m for m in labels if known is not None and m not in known]
        if bad:
            raise PrepareError(f"{path}: line {lineno}: label {bad[0]!r} is not in {classes_name}")
        if not labels or ytid in seen:
            continue
        seen.add(ytid)
        audio = _match_youtube(ytid, index)
        if audio is None:
            missing.append(ytid)
        else:
            items.append(Item(audio, labels, split))
    return items, missing


def _read_audioset(root: Path) -> Dataset:
    layout = "audioset"
    csv_path = _need(root / CLASS_LABELS_FILE, layout)
    try:
        mids, display = read_class_list(csv_path)
    except ManifestError as e:
        raise PrepareError(str(e)) from None
    known = set(mids)
    segments = {
        "train": _need(root / "balanced_train_segments.csv", layout),
        "eval": _need(root / "eval_segments.csv", layout),
    }
    index = _youtube_index(root)
    items: list[Item] = []
    missing: dict[str, list[str]] = {}
    for split, path in segments.items():
        found, missing[split] = read_segments(path, split, index, known, csv_path.name)
        items.extend(found)
    data = Dataset(items, mids, display, {"train": {"train"}, "eval": {"eval"}}, missing)
    _missing_note(missing, "segments (YouTube ids)", data.notes)
    return data


def _read_voxceleb1(root: Path) -> Dataset:
    layout = "voxceleb1"
    split_file = _need(root / "iden_split.txt", layout)
    roots = [
        r
        for r in (root / "wav", root / "vox1_dev_wav" / "wav", root / "vox1_test_wav" / "wav")
        if r.is_dir()
    ]
    if not roots:
        raise PrepareError(f"{root / 'wav'} not found ({layout} layout: {LAYOUT_HELP[layout]})")
    names = {"1": "train", "2": "valid", "3": "test"}
    items, missing = [], {"train": [], "valid": [], "test": []}
    for lineno, line in enumerate(split_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[0] not in names:
            raise PrepareError(
                f"{split_file}: line {lineno}: expected '<1|2|3> idXXXXX/<video>/<utt>.wav'"
            )
        split, rel = names[parts[0]], parts[1]
        path = next((r / rel for r in roots if (r / rel).is_file()), None)
        if path is None:
            missing[split].append(rel)
            continue
        items.append(Item(path, (rel.split("/")[0],), split))
    classes = sorted({it.labels[0] for it in items})
    data = Dataset(
        items, classes, {}, {"train": {"train"}, "valid": {"valid"}, "test": {"test"}}, missing
    )
    _missing_note(missing, "utterances", data.notes)
    return data


_EMO_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[")


def _read_iemocap(root: Path) -> Dataset:
    layout = "iemocap"
    sessions = sorted(
        (p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"Session\d+", p.name)),
        key=lambda p: int(p.name[7:]),
    )
    if not sessions:
        raise PrepareError(
            f"{root / 'Session1'} not found ({layout} layout: {LAYOUT_HELP[layout]})"
        )
    items, missing, dropped = [], {}, Counter()
    for sess in sessions:
        fold = f"fold{int(sess.name[7:])}"
        emo_dir = _need(sess / "dialog" / "EmoEvaluation", layout)
        _need(sess / "sentences" / "wav", layout)
        missing[fold] = []
        for txt in sorted(emo_dir.glob("*.txt")):
            if txt.name.startswith("."):
                continue
            for line in txt.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _EMO_LINE.match(line.strip())
                if not m:
                    continue
                utt, emo = m.group(1), m.group(2)
                if emo not in IEMOCAP_MAP:
                    dropped[emo] += 1
                    continue
                path = sess / "sentences" / "wav" / utt.rsplit("_", 1)[0] / f"{utt}.wav"
                if not path.is_file():
                    missing[fold].append(utt)
                    continue
                items.append(Item(path, (IEMOCAP_MAP[emo],), fold))
    folds = [f"fold{int(s.name[7:])}" for s in sessions]
    notes = []
    if dropped:
        notes.append(
            "left out (not in the 4-class protocol): "
            + ", ".join(f"{e} {n}" for e, n in sorted(dropped.items()))
        )
    if len(folds) != 5:
        msg = f"{len(folds)} sessions found (IEMOCAP has 5): {len(folds)} folds written"
        notes.append(msg)
        warnings.warn(msg, PrepareWarning, stacklevel=3)
    if len(folds) < 2:
        raise PrepareError(f"{root}: leave-one-session-out needs at least 2 sessions")
    data = Dataset(items, list(IEMOCAP_CLASSES), {}, _folds(folds), missing, notes)
    _missing_note(missing, "utterances", notes)
    return data


def _read_urbansound8k(root: Path) -> Dataset:
    layout = "urbansound8k"
    meta = _need(root / "metadata" / "UrbanSound8K.csv", layout)
    audio = _need(root / "audio", layout)
    rows = _read_csv(meta, ("slice_file_name", "fold", "classID", "class"), layout)
    by_id: dict[int, str] = {}
    items, missing = [], []
    for line, row in enumerate(rows, start=2):
        try:
            cid, fold = int(row["classID"]), int(row["fold"])
        except ValueError:
            raise PrepareError(f"{meta}: line {line}: fold and classID must be integers") from None
        if by_id.setdefault(cid, row["class"]) != row["class"]:
            raise PrepareError(f"{meta}: line {line}: classID {cid} has two class names")
        path = audio / f"fold{fold}" / row["slice_file_name"]
        if not path.is_file():
            missing.append(f"fold{fold}/{row['slice_file_name']}")
            continue
        items.append(Item(path, (row["class"],), f"fold{fold}"))
    classes = [by_id[c] for c in sorted(by_id)]
    folds = sorted({it.split for it in items}, key=lambda s: int(s[4:]))
    data = Dataset(items, classes, {}, _folds(folds), {"all": missing})
    _missing_note(data.missing, "files", data.notes)
    if len(folds) != 10:
        data.notes.append(f"{len(folds)} folds found (the official UrbanSound8K has 10)")
    return data


LAYOUTS = {
    "esc50": (_read_esc50, "meta/esc50.csv"),
    "speechcommands_v2": (
        lambda root: _read_speechcommands(root, "speechcommands_v2"),
        "validation_list.txt",
    ),
    "speechcommands_v1": (
        lambda root: _read_speechcommands(root, "speechcommands_v1"),
        "validation_list.txt",
    ),
    "audioset": (_read_audioset, "balanced_train_segments.csv"),
    "voxceleb1": (_read_voxceleb1, "iden_split.txt"),
    "iemocap": (_read_iemocap, "Session1"),
    "urbansound8k": (_read_urbansound8k, "metadata/UrbanSound8K.csv"),
}
LAYOUT_HELP = {
    "esc50": "audio/*.wav and meta/esc50.csv, as in ESC-50-master.zip",
    "speechcommands_v2": "<word>/*.wav, validation_list.txt, testing_list.txt "
    "(speech_commands_v0.02.tar.gz)",
    "speechcommands_v1": "<word>/*.wav, validation_list.txt, testing_list.txt "
    "(speech_commands_v0.01.tar.gz)",
    "audioset": "balanced_train_segments.csv, eval_segments.csv, class_labels_indices.csv and "
    "the downloaded clips named by YouTube id",
    "voxceleb1": "iden_split.txt and wav/idXXXXX/<video>/<utt>.wav",
    "iemocap": "Session1..5/sentences/wav/<dialog>/<utt>.wav and "
    "Session1..5/dialog/EmoEvaluation/<dialog>.txt, as in IEMOCAP_full_release",
    "urbansound8k": "audio/fold1..10/*.wav and metadata/UrbanSound8K.csv",
}


# --------------------------------------------------------------------------------------------------
# Writing


def _path_text(path: Path, out: Path, relative: bool) -> str:
    return os.path.relpath(path, out) if relative else str(path)


def _write_manifest(out: Path, name: str, rows: list[Item], fmt: str, relative: bool) -> Path:
    first = None
    if fmt in ("csv", "both"):
        first = atomic_write_csv(
            out / f"{name}.csv",
            ["path", "label"],
            ([_path_text(it.path, out, relative), ";".join(it.labels)] for it in rows),
        )
    if fmt in ("json", "both"):
        data = [
            {"wav": _path_text(it.path, out, relative), "labels": ",".join(it.labels)}
            for it in rows
        ]
        path = atomic_write_json(out / f"{name}.json", {"data": data}, indent=1)
        first = first or path
    assert first is not None
    return first


def _write_all(out: Path, items: list[Item], relative: bool) -> None:
    atomic_write_csv(
        out / "all.csv",
        ["path", "label", "split"],
        ([_path_text(it.path, out, relative), ";".join(it.labels), it.split] for it in items),
    )


def _write_class_labels(path: Path, classes: list[str], display: dict[str, str]) -> None:
    rows = ([k, name, display.get(name, name)] for k, name in enumerate(classes))
    atomic_write_csv(path, ["index", "mid", "display_name"], rows)


def _sample_rates(paths: list[Path], n: int) -> tuple[dict[int, int], int]:
    """Native rates of up to ``n`` files spread evenly over ``paths`` (header reads only)."""
    if n <= 0 or not paths:
        return {}, 0
    step = max(1, len(paths) // n)
    rates: Counter[int] = Counter()
    checked = 0
    for p in paths[::step][:n]:
        try:
            rates[int(soundfile.info(str(p)).samplerate)] += 1
            checked += 1
        except Exception:  # a format libsndfile lacks: load_audio decodes it with ffmpeg
            continue
    return dict(rates), checked

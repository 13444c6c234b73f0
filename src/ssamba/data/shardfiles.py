"""WebDataset-format tar shards on disk: names, patterns and the member index (no torch).

A shard is a plain (uncompressed) tar holding, per clip, ``KEY.flac`` (or another audio
extension) and ``KEY.json`` (``{"labels": [...], "duration": seconds, "source": name}``); the
key is the member name up to the first dot of its base name, as WebDataset groups them.
``ssamba shard`` also writes ``index.json`` next to the shards: the class list and, per shard,
its clips with the byte offset and size of their audio, so readers seek instead of scanning.

A shard spec is a brace pattern ``DIR/shard-{000000..000123}.tar`` (also ``{a,b,c}``), one
``.tar`` file, or a folder of shards (its ``index.json`` lists them; else its ``shard-*.tar``).
"""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ssamba.errors import ManifestError

SHARD_NAME = "shard-{:06d}.tar"
INDEX_NAME = "index.json"
INDEX_FORMAT = "ssamba-shards"
AUDIO_SUFFIXES = ("flac", "wav", "mp3", "ogg", "opus")
_BRACE = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True)
class ShardMember:
    """One clip of a shard: where its audio bytes lie, its labels and duration."""

    shard: Path
    key: str
    offset: int  # byte offset of the audio data in the tar
    size: int
    duration: float | None
    labels: tuple[str, ...]


def expand_braces(spec: str) -> list[str]:
    """``a{000..002}b`` -> ``a000b a001b a002b`` (zero padding kept); ``{x,y}`` -> both; nested
    groups expand left to right."""
    m = _BRACE.search(spec)
    if m is None:
        return [spec]
    body, head, tail = m.group(1), spec[: m.start()], spec[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo:
            raise ManifestError(f"{spec}: empty range {{{body}}}")
        width = len(rng.group(1))
        items = [f"{k:0{width}d}" for k in range(lo, hi + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise ManifestError(f"{spec}: cannot expand {{{body}}} (use {{000..123}} or {{a,b}})")
    return [out for item in items for out in expand_braces(head + item + tail)]


def is_shard_spec(path: str | Path) -> bool:
    """Whether ``path`` names shards rather than a manifest: a brace pattern, a ``.tar`` file, or
    a folder holding an ``index.json`` of shards or ``shard-*.tar`` files."""
    text = str(path)
    if _BRACE.search(text) or text.endswith(".tar"):
        return True
    p = Path(text).expanduser()
    if not p.is_dir():
        return False
    if (p / INDEX_NAME).is_file() and _is_index(p / INDEX_NAME):
        return True
    return next(p.glob("shard-*.tar"), None) is not None


def _is_index(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def shard_paths(spec: str | Path) -> list[Path]:
    """The shard files a spec names, in order; every one must exist."""
    text = str(spec)
    p = Path(text).expanduser()
    if p.is_dir():
        index = p / INDEX_NAME
        if index.is_file() and _is_index(index):
            names = [s["name"] for s in json.loads(index.read_text(encoding="utf-8"))["shards"]]
            paths = [p / n for n in names]
        else:
            paths = sorted(p.glob("shard-*.tar"))
        if not paths:
            raise ManifestError(f"{p}: no shards in this folder")
    else:
        paths = [Path(s).expanduser() for s in expand_braces(text)]
    missing = [str(q) for q in paths if not q.is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise ManifestError(f"{spec}: {len(missing)} shard(s) not found: {shown}")
    return paths


def read_index(folder: Path) -> dict | None:
    index = folder / INDEX_NAME
    if not (index.is_file() and _is_index(index)):
        return None
    return json.loads(index.read_text(encoding="utf-8"))


def shard_members(spec: str | Path) -> tuple[list[ShardMember], list[str] | None]:
    """Every clip of the shards a spec names, in shard order, and the class list when an index
    holds one. Shards listed in their folder's ``index.json`` are read from it; others are
    scanned (tar headers and the small JSON members)."""
    paths = shard_paths(spec)
    indexes: dict[Path, dict | None] = {}
    members: list[ShardMember] = []
    classes = None
    for path in paths:
        folder = path.parent
        if folder not in indexes:
            indexes[folder] = read_index(folder)
        index = indexes[folder]
        entry = None
        if index is not None:
            entry = next((s for s in index["shards"] if s["name"] == path.name), None)
            classes = index.get("classes") if classes is None else classes
        members += _from_index(path, entry) if entry is not None else scan_shard(path)
    return members, classes


def _from_index(path: Path, entry: dict) -> list[ShardMember]:
    return [
        ShardMember(path, key, int(off), int(size), dur, tuple(labels))
        for key, off, size, dur, labels in entry["members"]
    ]


def scan_shard(path: Path) -> list[ShardMember]:
    """The clips of one WebDataset tar, read from its headers (any tar, also not ours)."""
    audio: dict[str, tuple[int, int]] = {}
    meta: dict[str, dict] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                prefix = info.name[: len(info.name) - len(base)]
                stem, suffix = base.split(".", 1)
                key = prefix + stem
                if suffix.lower() in AUDIO_SUFFIXES:
                    audio[key] = (info.offset_data, info.size)
                    order.append(key)
                elif suffix.lower() == "json":
                    meta[key] = json.loads(tar.extractfile(info).read().decode("utf-8"))
    except (OSError, tarfile.TarError, ValueError) as e:
        raise ManifestError(f"{path}: not a readable tar shard ({e})") from None
    out = []
    for key in order:
        info = meta.get(key, {})
        labels = info.get("labels", info.get("label", ()))
        labels = (labels,) if isinstance(labels, str) else tuple(str(x) for x in labels)
        out.append(ShardMember(path, key, *audio[key], info.get("duration"), labels))
    return out

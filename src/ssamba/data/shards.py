"""WebDataset tar shards: writing them (``ssamba shard``) and streaming them in training.

:func:`write_shards` packs a manifest's clips into ``shard-000000.tar``, ... (``KEY.flac`` +
``KEY.json``; see :mod:`.shardfiles`), each written atomically, plus ``index.json``.

:class:`ShardStream` streams an :class:`AudioDataset` whose manifest is read from shards (any
manifest reader accepts a shard spec). Its order is a function of ``(seed, epoch, rank)`` alone,
not of the worker count:

1. the epoch permutes the shards (seeded by ``(seed, epoch)``) and concatenates their clips;
2. rank ``r`` takes the ``r``-th of ``world_size`` equal contiguous parts of that stream,
   ``len(dataset) // world_size`` clips each: every rank takes the same number of steps, and
   the ``len(dataset) % world_size`` clips at the stream's end are left out of this epoch (other
   ones each epoch, as the shard order changes; none when the count divides);
3. the rank's part goes through a shuffle buffer of ``buffer`` clips seeded by
   ``(seed, epoch, rank)`` (no clip leaves it more than ``buffer`` places before its place in
   the stream), and is cut into micro-batches; clips after the last full micro-batch are left
   out too.

Only indices are shuffled (the index knows every clip's offset), so a worker reads just its own
clips: DataLoader worker ``w`` of ``W`` makes micro-batches ``start + w``, ``start + w + W``, ...,
which the DataLoader's round robin delivers in order; each clip's bytes are read by a seek into
its shard, and the reads of all workers move through the shards together, a buffer's width
apart at most. Resuming at micro-batch ``start`` recomputes the same order and begins there:
nothing before it is read, and the batches are those of an uninterrupted run, for any worker
count.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ssamba.data.dataset import AudioDataset, item_generator
from ssamba.data.manifest import Manifest
from ssamba.data.shardfiles import INDEX_FORMAT, INDEX_NAME, SHARD_NAME
from ssamba.errors import AudioError, UsageError
from ssamba.fileio import atomic_write, atomic_write_json

DEFAULT_BUFFER = 1000
MAX_OPEN = 8  # shard files a reader keeps open
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30})


def parse_size(text: str) -> int:
    """``"1GB"`` -> 10**9 bytes (KB/MB/GB/TB decimal, KiB/MiB/GiB binary, plain bytes)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if m is None or m.group(2).upper() not in _UNITS:
        raise UsageError(f"not a size: {text!r} (e.g. 1GB, 500MB)")
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if size <= 0:
        raise UsageError(f"the shard size must be positive, got {text!r}")
    return size


# ---------------------------------------------------------------------------- writing
@dataclass
class _Shard:
    name: str
    members: list  # [key, offset, size, duration, labels]
    chunks: list  # bytes to write, in order
    bytes: int = 0


def clip_flac(path: Path) -> tuple[bytes, float]:
    """FLAC bytes of an audio file and its duration: FLAC files as they are, others re-encoded
    losslessly at their own rate and channels (16-bit PCM stays 16-bit, deeper formats 24-bit)."""
    try:
        info = sf.info(str(path))
        duration = info.frames / info.samplerate
        if info.format == "FLAC":
            return path.read_bytes(), duration
        subtype = "PCM_16" if info.subtype in ("PCM_16", "PCM_U8", "PCM_S8") else "PCM_24"
        data, rate = sf.read(str(path), dtype="float32" if subtype == "PCM_24" else "int16")
        buf = io.BytesIO()
        sf.write(buf, data, rate, format="FLAC", subtype=subtype)
        return buf.getvalue(), duration
    except AudioError:
        raise
    except Exception as e:  # libsndfile raises several types; all mean "cannot decode"
        raise AudioError(path, f"cannot pack into a shard ({e})") from None


def _tar_member(name: str, data: bytes) -> tuple[bytes, bytes]:
    """(header, padded data) of one regular tar member (deterministic: no time, owner)."""
    import tarfile

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    return header, data + b"\0" * (-len(data) % 512)


def write_shards(
    manifest: Manifest,
    out: str | Path,
    shard_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Pack every clip of ``manifest`` into shards of at most ``shard_size`` bytes (a clip larger
    than that gets a shard of its own) in ``out``; returns the index (also ``index.json``).
    Keys are the clip's position, ``%09d``: unique and in manifest order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = []
    current = _Shard(SHARD_NAME.format(0), [], [])
    for k, ex in enumerate(manifest.examples):
        flac, duration = clip_flac(ex.path)
        key = f"{k:09d}"
        meta = json.dumps(
            {"labels": list(ex.labels), "duration": round(duration, 6), "source": ex.path.name}
        ).encode("utf-8")
        h1, d1 = _tar_member(f"{key}.flac", flac)
        h2, d2 = _tar_member(f"{key}.json", meta)
        size = len(h1) + len(d1) + len(h2) + len(d2)
        if current.members and current.bytes + size + 1024 > shard_size:
            shards.append(_finish_shard(out, current))
            current = _Shard(SHARD_NAME.format(len(shards)), [], [])
        offset = current.bytes + len(h1)
        current.members.append([key, offset, len(flac), round(duration, 6), list(ex.labels)])
        current.chunks += [h1, d1, h2, d2]
        current.bytes += size
        if progress is not None:
            progress(1)
    shards.append(_finish_shard(out, current))
    index = {
        "format": INDEX_FORMAT,
        "version": 1,
        "clips": len(manifest),
        "classes": list(manifest.classes),
        "multilabel": manifest.multilabel,
        "shards": shards,
    }
    atomic_write_json(out / INDEX_NAME, index, indent=None)
    return index


def _finish_shard(out: Path, shard: _Shard) -> dict:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for chunk in shard.chunks:
                f.write(chunk)
            f.write(b"\0" * 1024)  # the tar end-of-archive marker

    atomic_write(out / shard.name, write)
    return {
        "name": shard.name,
        "count": len(shard.members),
        "bytes": shard.bytes + 1024,
        "members": shard.members,
    }


# ---------------------------------------------------------------------------- streaming
def buffer_order(n: int, size: int, seed_gen: torch.Generator) -> list[int]:
    """The order in which a shuffle buffer of ``size`` emits positions ``0..n-1`` read in order:
    fill the buffer, then emit a random one and read the next; drain at random at the end."""
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=seed_gen)))
    draws = rng.random(n)
    buf: list[int] = []
    out: list[int] = []
    for pos in range(n):
        buf.append(pos)
        if len(buf) >= size:
            out.append(_pop_random(buf, draws[len(out)]))
    while buf:
        out.append(_pop_random(buf, draws[len(out)]))
    return out


def _pop_random(buf: list[int], u: float) -> int:
    j = min(int(u * len(buf)), len(buf) - 1)
    buf[j], buf[-1] = buf[-1], buf[j]
    return buf.pop()


class ShardStream(IterableDataset):
    """Streams an :class:`AudioDataset` read from shards in the order the module describes.

    ``batch_size``: clips per micro-batch and rank. :meth:`set_position` ``(epoch, start_batch)``
    before each iterator; the values live in shared memory so that persistent workers see them.
    """

    def __init__(
        self,
        dataset: AudioDataset,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        if dataset.manifest.format != "shards":
            raise UsageError("ShardStream needs a dataset read from shards")
        if batch_size < 1 or buffer < 1:
            raise UsageError("batch_size and buffer must be >= 1")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.buffer = shuffle, buffer
        self.groups = _shard_groups(dataset.manifest)
        self.quota = len(dataset) // world_size
        self.batches = self.quota // batch_size
        self.position = torch.zeros(2, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        """Clips per rank and epoch."""
        return self.quota

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.position[0], self.position[1] = int(epoch), int(start_batch)

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    def rank_clips(self, epoch: int) -> list[int]:
        """This rank's dataset indices of ``epoch`` in reading order (before the buffer)."""
        order = list(range(len(self.groups)))
        if self.shuffle:
            g = item_generator(self.seed, epoch, 0, 11)
            order = torch.randperm(len(self.groups), generator=g).tolist()
        stream = [i for s in order for i in self.groups[s]]
        return stream[self.rank * self.quota : (self.rank + 1) * self.quota]

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's micro-batches of ``epoch`` end to end, as the loader delivers them."""
        clips = self.rank_clips(epoch)
        if self.shuffle:
            g = item_generator(self.seed, epoch, self.rank, 13)
            clips = [clips[p] for p in buffer_order(len(clips), self.buffer, g)]
        return clips[: self.batches * self.batch_size]

    def __iter__(self) -> Iterator[dict]:
        epoch, start = int(self.position[0]), int(self.position[1])
        info = get_worker_info()
        workers, wid = (1, 0) if info is None else (info.num_workers, info.id)
        self.dataset.set_epoch(epoch)
        order = self.epoch_order(epoch)
        # the loader asks its workers in turn: worker w makes batches start + w, + workers, ...
        mine = range(start + wid, self.batches, workers)
        todo = [i for k in mine for i in order[k * self.batch_size : (k + 1) * self.batch_size]]
        return self._read(todo)

    def _read(self, todo: list[int]) -> Iterator[dict]:
        """The items of ``todo``, each clip's bytes read by a seek into its open shard."""
        examples = self.dataset.manifest.examples
        handles: dict[Path, object] = {}
        try:
            for i in todo:
                ex = examples[i]
                f = handles.get(ex.path)
                if f is None:
                    if len(handles) >= MAX_OPEN:  # the buffer spans a few shards at a time
                        handles.pop(next(iter(handles))).close()
                    f = handles[ex.path] = open(ex.path, "rb")
                f.seek(ex.offset)
                yield self.dataset.get(i, f.read(ex.size))
        finally:
            for f in handles.values():
                f.close()


def _shard_groups(manifest: Manifest) -> list[list[int]]:
    """Dataset indices grouped by shard, in manifest order."""
    groups: list[list[int]] = []
    last = None
    for k, ex in enumerate(manifest.examples):
        if ex.path != last:
            groups.append([])
            last = ex.path
        groups[-1].append(k)
    return groups


def streamable(dataset, sampling: dict) -> bool:
    """Whether a training set streams from shards: read from shards, no weighted sampling (which
    draws with replacement: it reads shard clips by random access instead)."""
    manifest = getattr(dataset, "manifest", None)
    return (
        isinstance(dataset, AudioDataset)
        and manifest is not None
        and manifest.format == "shards"
        and not sampling.get("balanced")
        and sampling.get("weights") is None
        and sampling.get("shuffle", True)
    )


__all__ = [
    "DEFAULT_BUFFER",
    "ShardStream",
    "buffer_order",
    "clip_flac",
    "parse_size",
    "streamable",
    "write_shards",
]

"""WebDataset tar shards: writing them (``ssamba shard``) and streaming them in training.

:func:`write_shards` packs a manifest's clips into ``shard-000000.tar``, ... (``KEY.flac`` +
``KEY.json``; see :mod:`.shardfiles`), each written atomically, plus ``index.json``.

:class:`ShardStream` streams an :class:`AudioDataset` whose manifest is read from shards (any
manifest reader accepts a shard spec). Its order is a function of ``(seed, epoch, rank)`` and
the worker count alone:

1. the epoch permutes the shards (seeded by ``(seed, epoch)``) and concatenates their clips;
2. rank ``r`` takes the ``r``-th of ``world_size`` equal contiguous parts of that stream,
   ``len(dataset) // world_size`` clips each: every rank takes the same number of steps, and
   the ``len(dataset) % world_size`` clips at the stream's end are left out of this epoch (other
   ones each epoch, as the shard order changes; none when the count divides);
3. a rank's micro-batch ``k`` belongs to worker ``k % workers``; each worker reads its own
   contiguous part of the rank's clips (seeking past the rest) and shuffles it through a buffer
   of ``buffer`` clips seeded by ``(seed, epoch, rank, worker)``; clips after the rank's last
   full micro-batch are left out too.

Resuming at micro-batch ``s`` recomputes the same orders (indices only, no reading), starts each
worker after the batches it had delivered and rotates the workers so that the DataLoader's
round robin continues with batch ``s``: the same batches in the same order as an uninterrupted
run with the same worker count. Reading starts at the first clip still needed.
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

    ``batch_size``: clips per micro-batch and rank; ``workers``: the DataLoader's worker count
    (0: the main process). :meth:`set_position` ``(epoch, start_batch)`` before each iterator;
    the values live in shared memory so that persistent workers see them."""

    def __init__(
        self,
        dataset: AudioDataset,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        shuffle: bool = True,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        if dataset.manifest.format != "shards":
            raise UsageError("ShardStream needs a dataset read from shards")
        if batch_size < 1 or buffer < 1:
            raise UsageError("batch_size and buffer must be >= 1")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, int(seed)
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.shuffle, self.buffer = shuffle, buffer
        self.groups = _shard_groups(dataset.manifest)
        self.quota = len(dataset) // world_size
        self.position = torch.zeros(2, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        """Clips per rank and epoch."""
        return self.quota

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.position[0], self.position[1] = int(epoch), int(start_batch)

    def set_epoch(self, epoch: int) -> None:
        self.set_position(epoch, 0)

    def rank_clips(self, epoch: int) -> list[int]:
        """This rank's dataset indices of ``epoch``, in stream order (before the buffer)."""
        order = list(range(len(self.groups)))
        if self.shuffle:
            g = item_generator(self.seed, epoch, 0, 11)
            order = torch.randperm(len(self.groups), generator=g).tolist()
        stream = [i for s in order for i in self.groups[s]]
        return stream[self.rank * self.quota : (self.rank + 1) * self.quota]

    def worker_clips(self, epoch: int, worker: int, workers: int) -> list[int]:
        """Logical worker ``worker``'s dataset indices of ``epoch``, in emission order."""
        return self._worker_part(epoch, worker, workers)[1]

    def _worker_part(self, epoch: int, worker: int, workers: int) -> tuple[list, list]:
        """(the worker's clips in reading order, the same clips in emission order)."""
        clips = self.rank_clips(epoch)
        batches = self.quota // self.batch_size
        counts = [len(range(v, batches, workers)) * self.batch_size for v in range(workers)]
        lo = sum(counts[:worker])
        part = clips[lo : lo + counts[worker]]
        if not self.shuffle:
            return part, part
        g = item_generator(self.seed, epoch, self.rank, 13, worker)
        return part, [part[p] for p in buffer_order(len(part), self.buffer, g)]

    def epoch_order(self, epoch: int, workers: int | None = None) -> list[int]:
        """This rank's whole epoch, micro-batch by micro-batch, as the loader delivers it."""
        workers = max(1, self.workers if workers is None else workers)
        per = [self.worker_clips(epoch, v, workers) for v in range(workers)]
        out = []
        for k in range(self.quota // self.batch_size):
            b = (k // workers) * self.batch_size
            out += per[k % workers][b : b + self.batch_size]
        return out

    def __iter__(self) -> Iterator[dict]:
        epoch, start = int(self.position[0]), int(self.position[1])
        info = get_worker_info()
        workers, wid = (1, 0) if info is None else (info.num_workers, info.id)
        worker = (wid + start) % workers  # the loader's round robin continues with batch start
        done = len(range(worker, start, workers))  # batches this worker delivered before start
        self.dataset.set_epoch(epoch)
        stream, order = self._worker_part(epoch, worker, workers)
        return self._read(order[done * self.batch_size :], stream)

    def _read(self, todo: list[int], stream: list[int]) -> Iterator[dict]:
        """Items of ``todo``, reading the clips' bytes in ``stream`` order (seeking past the
        clips not needed) and holding at most about a buffer's worth of them."""
        examples = self.dataset.manifest.examples
        rank_of = {i: k for k, i in enumerate(stream)}
        needed = set(todo)
        cache: dict[int, bytes] = {}
        ptr = min((rank_of[i] for i in todo), default=0)
        handle, open_path = None, None
        try:
            for i in todo:
                while ptr <= rank_of[i]:
                    j = stream[ptr]
                    if j in needed:
                        ex = examples[j]
                        if ex.path != open_path:
                            if handle is not None:
                                handle.close()
                            handle, open_path = open(ex.path, "rb"), ex.path
                        handle.seek(ex.offset)
                        cache[j] = handle.read(ex.size)
                    ptr += 1
                yield self.dataset.get(i, cache.pop(i))
        finally:
            if handle is not None:
                handle.close()


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

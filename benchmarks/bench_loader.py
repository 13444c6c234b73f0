"""Loader throughput per worker: ten-second clips per second from WAV files, FLAC files and FLAC
shards, through the training dataset (decode, resample, fbank, normalise), in one process with
one torch thread, as a DataLoader worker runs.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_loader.py --clips 64 --rounds 5

Each round times every variant once on the same clips (interleaved, so a busy shared CPU hurts
all of them alike); the report gives the median over rounds. Variants:

- ``wav_files`` / ``flac_files``: an :class:`AudioDataset` over 16 kHz files, in order;
- ``flac_shards``: :class:`ShardStream` over the same clips packed by ``write_shards`` (our
  reader: seek to the offsets of ``index.json``; buffer shuffle on);
- ``flac_shards_webdataset``: the ``webdataset`` library reading the same shards (tar
  streaming, its shuffle buffer), each clip then through the same ``AudioDataset.get``; only
  when webdataset is installed;
- ``flac44k_files``: 44.1 kHz FLAC files (resampled to 16 kHz);
- stages, per clip: ``decode`` (soundfile, FLAC 16 kHz), ``resample`` (soxr 44.1 -> 16 kHz of a
  decoded clip), ``fbank`` (1024 frames from a decoded clip).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ssamba import audio
from ssamba.data import AudioDataset, ShardStream, read_manifest, write_shards

TARGET_LENGTH = 1024  # ten seconds of frames


def make_clips(folder: Path, n: int, seconds: float, rate: int, fmt: str, seed: int = 0):
    """Noise plus a few tones per clip (realistic spectra; FLAC compresses it as it does audio)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    for i in range(n):
        x = 0.05 * rng.standard_normal(t.size)
        for f in rng.uniform(100, 7000, size=3):
            x += 0.1 * np.sin(2 * np.pi * f * t)
        sf.write(folder / f"{i:05d}.{fmt}", x.astype(np.float32), rate, subtype="PCM_16")
    return folder


def dataset(spec) -> AudioDataset:
    return AudioDataset(read_manifest(spec, ignore_labels=True), TARGET_LENGTH, "audioset")


def run_files(ds: AudioDataset) -> int:
    for i in range(len(ds)):
        ds[i]
    return len(ds)


def run_stream(ds: AudioDataset) -> int:
    stream = ShardStream(ds, 1, seed=0)
    stream.set_position(0, 0)
    return sum(1 for _ in stream)


def run_webdataset(shards: Path, ds: AudioDataset) -> int:
    import webdataset as wds

    names = sorted(str(p) for p in shards.glob("shard-*.tar"))
    pipeline = wds.WebDataset(names, shardshuffle=False).shuffle(1000)
    n = 0
    for sample in pipeline:
        ds.get(int(sample["__key__"]), sample["flac"])  # key = manifest position
        n += 1
    return n


def stage_timers(folder16: Path, folder44: Path):
    """Per-clip timings of decode, resample and fbank alone."""
    flac = sorted(folder16.glob("*.flac"))
    flac44 = sorted(folder44.glob("*.flac"))
    decoded = [sf.read(p, dtype="float32")[0] for p in flac]
    decoded44 = [sf.read(p, dtype="float32")[0] for p in flac44]
    waves = [torch.from_numpy(d) for d in decoded]

    def decode():
        for p in flac:
            sf.read(p, dtype="float32")
        return len(flac)

    def resample():
        for d in decoded44:
            audio.resample(d, 44100, 16000)
        return len(decoded44)

    def fbank():
        for w in waves:
            audio.fbank(w, target_length=TARGET_LENGTH)
        return len(waves)

    return {"decode": decode, "resample": resample, "fbank": fbank}


def build(root: Path, n: int, seconds: float) -> dict:
    wav = make_clips(root / "wav", n, seconds, 16000, "wav")
    flac = make_clips(root / "flac", n, seconds, 16000, "flac")
    flac44 = make_clips(root / "flac44", n, seconds, 44100, "flac")
    write_shards(read_manifest(flac, ignore_labels=True), root / "shards", 50 * 10**6)
    shard_set = dataset(root / "shards")
    variants = {
        "wav_files": lambda: run_files(dataset(wav)),
        "flac_files": lambda: run_files(dataset(flac)),
        "flac_shards": lambda: run_stream(shard_set),
        "flac44k_files": lambda: run_files(dataset(flac44)),
    }
    try:
        import webdataset  # noqa: F401

        variants["flac_shards_webdataset"] = lambda: run_webdataset(root / "shards", shard_set)
    except ImportError:
        pass
    variants.update(stage_timers(flac, flac44))
    return variants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=64, help="clips per variant (default: 64)")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (default: 10)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (default: 5)")
    ap.add_argument("--json", help="also write the results to this file (default: none)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        variants = build(Path(tmp), args.clips, args.seconds)
        for run in variants.values():  # warm up: page cache, filterbank caches
            run()
        rates: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                t0 = time.perf_counter()
                n = run()
                rates[name].append(n / (time.perf_counter() - t0))
    medians = {k: round(statistics.median(v), 1) for k, v in rates.items()}
    print(f"{args.seconds:g}-second clips per second, one process, one torch thread "
          f"(median of {args.rounds} rounds, {args.clips} clips):")  # fmt: skip
    for name, rate in medians.items():
        print(f"  {name:24s} {rate:8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(medians, indent=2) + "\n")


if __name__ == "__main__":
    main()

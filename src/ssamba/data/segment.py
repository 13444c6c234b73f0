"""Long recordings -> fixed-length clips with a manifest (``ssamba segment``).

Each recording is read block by block (never whole: an hour of audio stays out of memory) at its
own rate and channels, and cut into clips of ``seconds``; the last, shorter part is kept when it
lasts at least ``min_seconds``. Clip ``k`` of ``DIR/sub/talk.wav`` (found under an input folder
``DIR``) is ``OUT/sub/talk-00000k.flac``; of an input file ``talk.wav`` it is
``OUT/talk-00000k.flac``. Every clip is written atomically; ``OUT/manifest.csv`` (one ``path``
column, relative to OUT) lists them in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import soundfile as sf

from ssamba.data.inputs import (
    AUDIO_EXTENSIONS,
    AUDIO_FILE,
    AUDIO_FOLDER,
    check_input,
)
from ssamba.errors import AudioError, UsageError
from ssamba.fileio import atomic_write, atomic_write_csv

SEGMENT_FORMATS = {"flac": "FLAC", "wav": "WAV"}
MANIFEST_NAME = "manifest.csv"
#: What ``ssamba segment`` cuts: recordings (audio files), and every audio file under a folder.
RECORDING_INPUTS = frozenset({AUDIO_FILE, AUDIO_FOLDER})


def find_recordings(inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, Path]]:
    """``(recording, output stem relative to OUT)`` for every input file and every audio file
    under an input folder, in a deterministic order; two recordings may not share a stem."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        p = check_input(item, RECORDING_INPUTS, "`ssamba segment`").path
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in AUDIO_EXTENSIONS)
            found += [(f, f.relative_to(p).with_suffix("")) for f in files if f.is_file()]
        elif p.is_file():
            found.append((p, Path(p.stem)))
        else:
            raise UsageError(f"{p}: no such file or folder")
    if not found:
        raise UsageError(f"no audio recordings in {', '.join(map(str, inputs))}")
    seen: dict[Path, Path] = {}
    for path, stem in found:
        if stem in seen:
            raise UsageError(f"{path} and {seen[stem]} would both be cut into {stem}-*: rename one")
        seen[stem] = path
    return found


def segment_recordings(
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    seconds: float = 10.0,
    min_seconds: float = 1.0,
    format: str = "flac",
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Cut recordings into clips (see the module docstring); returns ``{"recordings", "clips",
    "seconds", "too_short": [paths]}`` and writes ``OUT/manifest.csv``."""
    if seconds <= 0 or min_seconds < 0:
        raise UsageError("seconds must be > 0 and min_seconds >= 0")
    if format not in SEGMENT_FORMATS:
        raise UsageError(f"format must be one of {', '.join(SEGMENT_FORMATS)}, got {format!r}")
    out = Path(out)
    recordings = find_recordings(inputs)
    clips: list[Path] = []
    too_short: list[str] = []
    total = 0.0
    for path, stem in recordings:
        written, secs = cut_recording(path, out, stem, seconds, min_seconds, format)
        clips += written
        total += secs
        if not written:
            too_short.append(str(path))
        if progress is not None:
            progress(1)
    rows = [[c.relative_to(out).as_posix()] for c in clips]
    atomic_write_csv(out / MANIFEST_NAME, ["path"], rows, line_end="\n")
    return {
        "recordings": len(recordings),
        "clips": len(clips),
        "seconds": round(total, 3),
        "too_short": too_short,
    }


def cut_recording(
    path: Path, out: Path, stem: Path, seconds: float, min_seconds: float, format: str
) -> tuple[list[Path], float]:
    """The clips of one recording (written) and the seconds they hold."""
    try:
        f = sf.SoundFile(str(path))
    except Exception as e:  # libsndfile raises several types; all mean "cannot decode"
        raise AudioError(path, f"cannot decode ({e})") from None
    with f:
        rate = f.samplerate
        n, keep = round(seconds * rate), max(1, round(min_seconds * rate))
        subtype = "PCM_16" if f.subtype in ("PCM_16", "PCM_U8", "PCM_S8") else "PCM_24"
        if format == "wav":
            subtype = f.subtype if f.subtype in sf.available_subtypes("WAV") else "FLOAT"
        dtype = "int16" if subtype == "PCM_16" else "float32"
        written: list[Path] = []
        frames = 0
        for k, block in enumerate(f.blocks(blocksize=n, dtype=dtype, always_2d=True)):
            if len(block) < keep:
                break
            target = out / stem.parent / f"{stem.name}-{k:06d}.{format}"
            atomic_write(target, _writer(block, rate, SEGMENT_FORMATS[format], subtype))
            written.append(target)
            frames += len(block)
    return written, frames / rate


def _writer(block, rate: int, fmt: str, subtype: str):
    def write(tmp: Path) -> None:
        sf.write(str(tmp), block, rate, format=fmt, subtype=subtype)

    return write

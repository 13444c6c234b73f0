"""What the demo's data builders share: the clip record, per-clip random generators, WAV and
manifest writing, the build cache (``build.json``, ``meta.csv``), progress, summaries, and the
background noise (synthetic colours and recorded ambience). See :mod:`.builders` for the layout
every build writes."""

from __future__ import annotations

import csv
import io
import json
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ssamba.constants import SAMPLE_RATE
from ssamba.demo import sources as S
from ssamba.demo.signals import (
    coloured_noise,
    rms,
)
from ssamba.fileio import atomic_write_bytes, atomic_write_text, csv_text

BUILD_VERSION = 1
SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)


@dataclass
class Clip:
    """One planned output file: where it goes, its label/split and how to make it."""

    path: str  # relative to the output folder
    label: str
    split: str
    params: dict = field(default_factory=dict)


def clip_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def stable_id(text: str) -> int:
    return zlib.crc32(text.encode())


def write_wav(path: Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM atomically: a file that exists is complete, so a build resumes by
    rendering only the missing ones."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0).astype(np.float32), sample_rate, "PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


def write_text_if_changed(path: Path, text: str) -> None:
    # unchanged files keep their modification time (a re-run with the same arguments is a no-op)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def prepare_out(out: Path, spec: dict, growable: Sequence[str] = ()) -> bool:
    """Create ``out``; True when a previous build with the same spec may be reused.

    When ``build.json`` differs (in other keys than ``growable``: a build that only grows keeps
    its files), the WAVs listed in the old ``meta.csv`` are deleted first.
    """
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "build.json"
    text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
    if spec_path.exists():
        old = spec_path.read_text()
        if old == text or _without(_json_or_none(old), growable) == _without(spec, growable):
            write_text_if_changed(spec_path, text)
            return True
        delete_listed_wavs(out, keep=())
    write_text_if_changed(spec_path, text)
    return False


def _json_or_none(text: str) -> dict | None:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _without(spec: dict | None, keys: Sequence[str]) -> dict | None:
    return None if spec is None else {k: v for k, v in spec.items() if k not in keys}


def delete_listed_wavs(out: Path, keep: Sequence[str]) -> None:
    """Delete the WAVs the build's ``meta.csv`` lists, except the paths in ``keep``."""
    meta = out / "meta.csv"
    if not meta.exists():
        return
    kept = set(keep)
    with meta.open(newline="") as f:
        for row in csv.DictReader(f):
            p = (out / row["path"]).resolve()
            if row["path"] not in kept and out.resolve() in p.parents and p.suffix == ".wav":
                p.unlink(missing_ok=True)


def write_manifests(out: Path, clips: Sequence[Clip], meta_keys: Sequence[str]) -> dict:
    rows = [(c.path, c.label, c.split) for c in clips]
    paths = {"manifest": out / "manifest.csv"}
    write_text_if_changed(
        paths["manifest"], csv_text(("path", "label", "split"), rows, line_end="\n")
    )
    for split in SPLITS:
        paths[split] = out / f"{split}.csv"
        sub = [r for r in rows if r[2] == split]
        write_text_if_changed(
            paths[split], csv_text(("path", "label", "split"), sub, line_end="\n")
        )
    meta_rows = [
        (c.path, c.label, c.split, *(_fmt(c.params.get(k, "")) for k in meta_keys)) for c in clips
    ]
    paths["meta"] = out / "meta.csv"
    write_text_if_changed(
        paths["meta"], csv_text(("path", "label", "split", *meta_keys), meta_rows, line_end="\n")
    )
    return paths


def _fmt(v: object) -> object:
    return f"{v:.4g}" if isinstance(v, float) else v


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled or total == 0, leave=False)


def render_missing(
    out: Path,
    clips: Sequence[Clip],
    render: Callable[[Clip], np.ndarray],
    desc: str,
    progress: bool,
    prepare: Callable[[Sequence[Clip]], None] | None = None,
) -> tuple[int, int]:
    """Render the clips whose file is absent; returns (rendered, reused)."""
    todo = [c for c in clips if not (out / c.path).exists()]
    if prepare is not None and todo:
        prepare(todo)
    with progress_bar(len(todo), desc, progress) as bar:
        for c in todo:
            write_wav(out / c.path, render(c))
            bar.update()
    return len(todo), len(clips) - len(todo)


def split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    counts = [int(round(n * f)) for f in fractions[:2]]
    counts.append(max(n - sum(counts), 0))
    # at least one clip per split when possible
    for i in range(3):
        if counts[i] == 0 and n >= 3:
            j = int(np.argmax(counts))
            counts[j] -= 1
            counts[i] += 1
    return counts


def finish_labelled_build(
    name: str,
    out: Path,
    clips: Sequence[Clip],
    render: Callable[[Clip], np.ndarray],
    *,
    started: float,
    clip_seconds: float,
    meta_keys: Sequence[str],
    classes: Sequence[str],
    notes: Sequence[str] = (),
    extra: dict | None = None,
    progress: bool = True,
    prepare: Callable[[Sequence[Clip]], None] | None = None,
    desc: str | None = None,
) -> dict:
    """How every labelled set's build ends: render the clips not there yet, write the manifests,
    and return the summary (``started``: the build's ``time.perf_counter()`` at its start)."""
    rendered, reused = render_missing(out, clips, render, desc or name, progress, prepare)
    paths = write_manifests(out, clips, meta_keys)
    elapsed = time.perf_counter() - started
    return build_summary(
        name,
        out,
        clips,
        clip_seconds,
        rendered,
        reused,
        elapsed,
        list(notes),
        classes,
        paths,
        extra,
    )


def build_summary(
    name: str,
    out: Path,
    clips: Sequence[Clip],
    seconds_per_clip: float,
    rendered: int,
    reused: int,
    elapsed: float,
    notes: list[str],
    classes: Sequence[str] | None,
    paths: dict,
    extra: dict | None = None,
) -> dict:
    counts: dict[str, dict[str, int]] = {}
    for split in sorted({c.split for c in clips}, key=lambda s: (SPLITS + (s,)).index(s)):
        cnt = Counter(c.label for c in clips if c.split == split)
        counts[split] = {k: cnt[k] for k in (classes or sorted(cnt))}
    result = {
        "name": name,
        "out": out,
        **paths,
        "classes": list(classes or []),
        "counts": counts,
        "clips": len(clips),
        "minutes": len(clips) * seconds_per_clip / 60.0,
        "rendered": rendered,
        "reused": reused,
        "elapsed_s": elapsed,
        "notes": notes,
    }
    result.update(extra or {})
    return result


def format_summary(result: dict) -> str:
    """Readable summary of a builder's result (counts per class and split, minutes, notes)."""
    lines = [
        f"{result['name']}: {result['clips']} clips, {result['minutes']:.1f} min of audio in "
        f"{result['out']} ({result['rendered']} rendered, {result['reused']} reused, "
        f"{result['elapsed_s']:.1f} s)"
    ]
    counts = result["counts"]
    if result["classes"]:
        splits = list(counts)
        width = max(len(c) for c in result["classes"])
        lines.append("  " + " " * width + "".join(f"{s:>8s}" for s in splits))
        for c in result["classes"]:
            lines.append(f"  {c:<{width}s}" + "".join(f"{counts[s].get(c, 0):8d}" for s in splits))
    else:
        for split, cnt in counts.items():
            lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in cnt.items()))
    for key in ("manifest", "train", "valid", "test"):
        if key in result:
            lines.append(f"  {key}: {result[key]}")
    if result.get("sources"):
        lines.append("  sources: " + "; ".join(result["sources"]))
    for note in result["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Background noise (keywords; the mix's notes)


NOISE_KINDS = ("white", "pink", "brown", "hum", "recorded")


def make_noise(kind: str, n: int, rng: np.random.Generator, ambience: Sequence[Path]) -> np.ndarray:
    """Unit-RMS background noise of a given kind (``recorded`` = a crop of a real recording)."""
    if kind == "recorded" and ambience:
        for _ in range(5):
            path = ambience[int(rng.integers(len(ambience)))]
            frames, sr = S.audio_info(path)
            dur = frames / sr
            start = float(rng.uniform(0, max(dur - n / SAMPLE_RATE, 0)))
            x = S.read_segment(path, start, n / SAMPLE_RATE)[:n]
            if len(x) < n:
                x = np.tile(x, int(np.ceil(n / max(len(x), 1))))[:n] if len(x) else x
            if len(x) == n and rms(x) > 1e-3:
                return (x / rms(x)).astype(np.float32)
        kind = "pink"
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        base = 50.0 if rng.random() < 0.5 else 60.0
        phase = rng.uniform(0, 2 * np.pi, 6)
        x = sum(np.sin(2 * np.pi * base * (k + 1) * t + phase[k]) / (k + 1) for k in range(6))
        x = x / (rms(x) + 1e-12) + 0.5 * coloured_noise(n, 1.0, rng)
        return (x / rms(x)).astype(np.float32)
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}.get(kind, 1.0)
    return coloured_noise(n, exponent, rng)


def ambience_files() -> list[Path]:
    files = []
    for package_files in S.recorded_files().values():
        files += [p for p in package_files if any(h in str(p).lower() for h in S.AMBIENCE_HINTS)]
    return sorted(files)


def missing_recordings_note() -> list[str]:
    missing = [p for p, files in S.recorded_files().items() if not files]
    if not missing:
        return []
    return [f"recordings not installed (optional): {S.apt_command(*missing)}"]

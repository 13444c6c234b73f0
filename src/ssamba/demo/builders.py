"""Deterministic builders of the demo's data sets from real offline audio (see :mod:`.sources`).

Each builder writes 16 kHz mono 16-bit WAVs under ``out`` and CSV manifests ``path,label,split``
with paths relative to ``out`` (readable by :func:`ssamba.data.read_manifest`):

- ``manifest.csv`` (every split, ``split`` column), ``train.csv``, ``valid.csv``, ``test.csv``;
- ``meta.csv``: the same rows plus how each clip was made (voice, program, SNR, ...);
- ``build.json``: the arguments and source inventory of the build.

Everything a clip is made of is drawn from ``numpy.random.default_rng([seed, task, ...])`` seeded
per clip, so a clip does not depend on which other clips are (re)built. Re-running with the same
arguments reuses the WAVs already there (an interrupted build resumes); different arguments first
delete the files the previous build listed in its ``meta.csv`` (and nothing else), except that the
pretraining mix grows: more minutes keep the clips already made.

Hold-outs are fixed, whatever the seed (:mod:`.sources`): keyword test/valid voices, instrument
test/valid programs and speaker test/valid lines never appear in training, and the pretraining
mix uses only training voices and programs and no hedgewars voice-pack line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ssamba.constants import SAMPLE_RATE
from ssamba.demo import sources as S
from ssamba.demo.signals import (
    DRUM_KITS,
    MUSIC_STYLES,
    coloured_noise,
    db,
    fade,
    fit,
    music_notes,
    normalise,
    rms,
    shaped_noise,
    trim,
    weighted_choice,
)
from ssamba.errors import UsageError
from ssamba.fileio import atomic_write_bytes, atomic_write_text, csv_text

BUILD_VERSION = 1
SPLITS = ("train", "valid", "test")
DEFAULT_SPLIT_FRACTIONS = (0.6, 0.2, 0.2)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine",
    "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "learn", "follow",
    "forward", "backward", "visual", "bottle", "garden", "yellow", "window", "paper", "river",
    "button", "money", "open", "close", "start", "under", "over", "maybe", "hello",
)  # fmt: skip
KEYWORD_CLASSES = (*KEYWORDS, "unknown", "silence")
#: Share of each TTS engine in a split's voices (renormalised over the engines present).
ENGINE_WEIGHTS = {"espeak": 0.6, "flite": 0.3, "festival": 0.1}
#: Version of the pretraining mix's rendering: an earlier version's build is rebuilt, not extended.
MIX_BUILD_VERSION = 2
#: Shares of the pretraining mix's kinds (renormalised over the kinds whose sources are present).
PRETRAIN_SHARES = {"speech": 0.30, "music": 0.25, "recorded": 0.20, "mixture": 0.15, "noise": 0.10}
#: The kinds a clip of the mix, or each of a mixture's two (different) parts, can be.
MIX_PART_KINDS = ("speech", "music", "recorded", "noise")
#: Ranges the mix draws from (uniformly; the recordings' speed log-uniformly).
SPEECH_RATE = (0.7, 1.5)  # TTS speaking-rate factor (espeak-ng -s 115..248 words a minute)
SPEECH_PITCH = (0.55, 1.6)  # TTS pitch factor (espeak-ng -p 27..80; flite's mean f0)
SPEECH_SPEED = (0.92, 1.08)  # then played this much faster by resampling
RECORDED_SPEED = (0.8, 1.25)  # a recording's crop played this much faster ...
RECORDED_SPEED_PROB = 0.5  # ... this often (else as recorded)
MIX_RATIO_DB = (-10.0, 10.0)  # a mixture's second part relative to its first
MIX_LEVEL_DB = (-28.0, -14.0)  # RMS level of every clip
#: Clips per task of the mix's worker processes (each synthesizes, renders and writes its own).
MIX_CHUNK = 24


# --------------------------------------------------------------------------------------------------
# Helpers: files, manifests, caching


@dataclass
class Clip:
    """One planned output file: where it goes, its label/split and how to make it."""

    path: str  # relative to the output folder
    label: str
    split: str
    params: dict = field(default_factory=dict)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _stable_id(text: str) -> int:
    return zlib.crc32(text.encode())


def write_wav(path: Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit PCM atomically: a file that exists is complete, so a build resumes by
    rendering only the missing ones."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0).astype(np.float32), sample_rate, "PCM_16", format="WAV")
    atomic_write_bytes(path, buf.getvalue())


def _write_text_if_changed(path: Path, text: str) -> None:
    # unchanged files keep their modification time (a re-run with the same arguments is a no-op)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def _prepare_out(out: Path, spec: dict, growable: Sequence[str] = ()) -> bool:
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
            _write_text_if_changed(spec_path, text)
            return True
        _delete_listed_wavs(out, keep=())
    _write_text_if_changed(spec_path, text)
    return False


def _json_or_none(text: str) -> dict | None:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _without(spec: dict | None, keys: Sequence[str]) -> dict | None:
    return None if spec is None else {k: v for k, v in spec.items() if k not in keys}


def _delete_listed_wavs(out: Path, keep: Sequence[str]) -> None:
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


def _write_manifests(out: Path, clips: Sequence[Clip], meta_keys: Sequence[str]) -> dict:
    rows = [(c.path, c.label, c.split) for c in clips]
    paths = {"manifest": out / "manifest.csv"}
    _write_text_if_changed(
        paths["manifest"], csv_text(("path", "label", "split"), rows, line_end="\n")
    )
    for split in SPLITS:
        paths[split] = out / f"{split}.csv"
        sub = [r for r in rows if r[2] == split]
        _write_text_if_changed(
            paths[split], csv_text(("path", "label", "split"), sub, line_end="\n")
        )
    meta_rows = [
        (c.path, c.label, c.split, *(_fmt(c.params.get(k, "")) for k in meta_keys)) for c in clips
    ]
    paths["meta"] = out / "meta.csv"
    _write_text_if_changed(
        paths["meta"], csv_text(("path", "label", "split", *meta_keys), meta_rows, line_end="\n")
    )
    return paths


def _fmt(v: object) -> object:
    return f"{v:.4g}" if isinstance(v, float) else v


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled or total == 0, leave=False)


def _render_missing(
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
    with _progress(len(todo), desc, progress) as bar:
        for c in todo:
            write_wav(out / c.path, render(c))
            bar.update()
    return len(todo), len(clips) - len(todo)


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    counts = [int(round(n * f)) for f in fractions[:2]]
    counts.append(max(n - sum(counts), 0))
    # at least one clip per split when possible
    for i in range(3):
        if counts[i] == 0 and n >= 3:
            j = int(np.argmax(counts))
            counts[j] -= 1
            counts[i] += 1
    return counts


def _summary(
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
# Background noise (keywords)


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


def _ambience_files() -> list[Path]:
    files = []
    for package_files in S.recorded_files().values():
        files += [p for p in package_files if any(h in str(p).lower() for h in S.AMBIENCE_HINTS)]
    return sorted(files)


def _missing_recordings_note() -> list[str]:
    missing = [p for p, files in S.recorded_files().items() if not files]
    if not missing:
        return []
    return [f"recordings not installed (optional): {S.apt_command(*missing)}"]


# --------------------------------------------------------------------------------------------------
# TTS rendering shared by keywords and the pretraining mix


def _tts_requests(clips: Sequence[Clip]) -> list[S.TTSRequest]:
    return [c.params["_request"] for c in clips if "_request" in c.params]


def _synthesize_all(
    reqs: Sequence[S.TTSRequest], workers: int, progress: bool, desc: str
) -> dict[S.TTSRequest, tuple[np.ndarray, int]]:
    """Synthesize unique requests: espeak/flite in a thread pool, festival batched per voice."""
    unique = list(dict.fromkeys(reqs))
    results: dict[S.TTSRequest, tuple[np.ndarray, int]] = {}
    fest = [r for r in unique if r.voice.engine == "festival"]
    rest = [r for r in unique if r.voice.engine != "festival"]
    with _progress(len(unique), desc, progress) as bar:
        if fest:
            for r, res in zip(fest, S.synthesize_festival_batch(fest), strict=True):
                results[r] = res
            bar.update(len(fest))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for r, res in zip(rest, pool.map(S.synthesize, rest), strict=True):
                results[r] = res
                bar.update()
    return results


def _tts_to_16k(wave: np.ndarray, sr: int, speed: float) -> np.ndarray:
    """Resample to 16 kHz, reading the wave as if recorded at ``sr * speed`` (pitch + tempo)."""
    return S.resample(wave, sr * speed, SAMPLE_RATE)


def _pick_voice(pools: dict[str, list[S.Voice]], rng: np.random.Generator) -> S.Voice:
    engines = [e for e in ENGINE_WEIGHTS if pools.get(e)]
    w = np.array([ENGINE_WEIGHTS[e] for e in engines])
    engine = engines[int(rng.choice(len(engines), p=w / w.sum()))]
    pool = pools[engine]
    return pool[int(rng.integers(len(pool)))]


def _engine_pools(voices: Sequence[S.Voice]) -> dict[str, list[S.Voice]]:
    pools: dict[str, list[S.Voice]] = {}
    for v in sorted(voices):
        pools.setdefault(v.engine, []).append(v)
    return pools


def _tts_sources(by_split: dict[str, Sequence[S.Voice]]) -> list[str]:
    out = []
    for split, voices in by_split.items():
        cnt = Counter(v.engine for v in voices)
        out.append(f"{split} voices: " + ", ".join(f"{e} {n}" for e, n in sorted(cnt.items())))
    return out


def _tts_notes() -> list[str]:
    if not S.festival_voices():
        return [
            "festival voices not installed (optional): "
            + S.apt_command("festival", *(p for p, _ in S.FESTIVAL_VOICES.values()))
        ]
    return []


# --------------------------------------------------------------------------------------------------
# 1. Keyword spotting


def build_keywords(
    out: str | os.PathLike,
    per_class: int = 60,
    seed: int = 0,
    *,
    clip_seconds: float = 1.0,
    snr_db: tuple[float, float] = (5.0, 25.0),
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """12-class keyword spotting (10 commands + unknown + silence), 1 s TTS clips in noise.

    ``per_class`` clips per class, split train/valid/test by ``split_fractions``. The voices of
    each split are disjoint (:func:`ssamba.demo.sources.split_of_voice`): test voices are unseen
    in training. Each word is spoken with a random speaking rate, pitch and speed, at a random
    level and time offset, over white/pink/brown/hum noise or a real ambience recording at a
    random SNR in ``snr_db``; "silence" clips are noise only.
    """
    t0 = time.perf_counter()
    out, per_class, seed, clip_seconds = Path(out), int(per_class), int(seed), float(clip_seconds)
    by_split = S.voices_by_split(require=True)
    pools = {s: _engine_pools(by_split[s]) for s in SPLITS}
    ambience = _ambience_files()
    spec = {
        "builder": "keywords",
        "version": BUILD_VERSION,
        "per_class": per_class,
        "seed": seed,
        "clip_seconds": clip_seconds,
        "snr_db": list(snr_db),
        "split_fractions": list(split_fractions),
        "voices": {s: [v.key for v in by_split[s]] for s in SPLITS},
        "ambience": [str(p) for p in ambience],
    }
    _prepare_out(out, spec)
    n = round(clip_seconds * SAMPLE_RATE)
    clips = _plan_keywords(seed, per_class, split_fractions, pools, bool(ambience), snr_db)
    raw: dict = {}

    def prepare(todo: Sequence[Clip]) -> None:
        raw.update(_synthesize_all(_tts_requests(todo), workers, progress, "keywords: TTS"))

    def render(c: Clip) -> np.ndarray:
        return _render_keyword(c, n, raw, ambience)

    rendered, reused = _render_missing(out, clips, render, "keywords: clips", progress, prepare)
    paths = _write_manifests(out, clips, ("word", "voice", "speaker", "snr_db", "noise"))
    return _summary(
        "keywords",
        out,
        clips,
        clip_seconds,
        rendered,
        reused,
        time.perf_counter() - t0,
        _tts_notes() + _missing_recordings_note(),
        KEYWORD_CLASSES,
        paths,
        {
            "voices": {s: len(by_split[s]) for s in SPLITS},
            "sources": _tts_sources(by_split) + [f"{len(ambience)} ambience recordings"],
        },
    )


def _plan_keywords(
    seed: int,
    per_class: int,
    split_fractions: Sequence[float],
    pools: dict[str, dict[str, list[S.Voice]]],
    has_ambience: bool,
    snr_db: tuple[float, float],
) -> list[Clip]:
    """Every keyword clip with how to make it: word, voice, speed, level, noise, SNR."""
    clips: list[Clip] = []
    for ci, label in enumerate(KEYWORD_CLASSES):
        counts = _split_counts(per_class, split_fractions)
        i = 0
        for split, count in zip(SPLITS, counts, strict=True):
            for _ in range(count):
                rng = _rng(seed, 1, ci, i)
                p: dict = {"noise": NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]}
                if not has_ambience and p["noise"] == "recorded":
                    p["noise"] = "pink"
                if label != "silence":
                    p.update(_keyword_speech(label, pools[split], rng, snr_db))
                else:
                    p.update(level_db=float(rng.uniform(-50, -20)))
                p["_seed"] = (seed, 2, ci, i)
                clips.append(Clip(f"wav/{split}/{label}/{label}_{i:04d}.wav", label, split, p))
                i += 1
    return clips


def _keyword_speech(
    label: str,
    pools: dict[str, list[S.Voice]],
    rng: np.random.Generator,
    snr_db: tuple[float, float],
) -> dict:
    """The spoken part of a keyword clip: the word, its TTS request, speed, level and SNR."""
    word = label if label in KEYWORDS else str(rng.choice(UNKNOWN_WORDS))
    voice = _pick_voice(pools, rng)
    req = S.TTSRequest(
        voice,
        word,
        rate=round(float(rng.uniform(0.8, 1.3)), 3),
        pitch=round(float(rng.uniform(0.75, 1.35)), 3),
    )
    return {
        "voice": voice.key,
        "speaker": voice.speaker,
        "word": word,
        "_request": req,
        "speed": float(rng.uniform(0.94, 1.06)),
        "level_db": float(rng.uniform(-20, -3)),
        "snr_db": float(rng.uniform(*snr_db)),
    }


def _render_keyword(c: Clip, n: int, raw: dict, ambience: Sequence[Path]) -> np.ndarray:
    """The word (synthesized in ``raw``) at a random offset over noise, or noise alone."""
    p = c.params
    rng = _rng(*p["_seed"])
    noise = make_noise(p["noise"], n, rng, ambience)
    if c.label == "silence":
        return noise * db(p["level_db"])
    wave, sr = raw[p["_request"]]
    speech = trim(_tts_to_16k(wave, sr, p["speed"]))
    if len(speech) == 0:
        speech = np.zeros(1, np.float32)
    speech = fade(speech[:n])
    speech = speech / (np.abs(speech).max() + 1e-9) * db(p["level_db"])
    level = rms(speech)
    placed, p["offset"] = fit(speech, n, rng)
    mix = placed + noise * level / db(p["snr_db"])
    peak = np.abs(mix).max()
    return mix / peak * 0.99 if peak > 0.99 else mix


# --------------------------------------------------------------------------------------------------
# 2. Instrument families


def _render_note_clip(
    renderer: S.NoteRenderer,
    soundfont: str,
    program: int,
    rng: np.random.Generator,
    seconds: float,
    style: str = "note",
    tries: int = 12,
) -> tuple[np.ndarray, dict]:
    """Notes of a ``style`` (:data:`ssamba.demo.signals.MUSIC_STYLES`; ``drums``: ``program`` is
    a GM drum kit) with energy: redraws while the preset is silent at the keys drawn."""
    lo, hi = S.program_key_range(program)
    for attempt in range(tries):
        if attempt >= tries // 2:  # narrow to the middle of the range after failures
            mid = (lo + hi) // 2
            lo, hi = max(lo, mid - 6), min(hi, mid + 6)
        notes = music_notes(style, rng, lo, hi, seconds)
        x = renderer.render(soundfont, program, notes, seconds, drums=style == "drums")
        if np.all(np.isfinite(x)) and rms(x) > 1e-3 and np.abs(x).max() > 5e-3:
            return x, {"key": notes[0][2], "velocity": notes[0][3], "notes": len(notes)}
    raise RuntimeError(f"{soundfont} program {program}: silent after {tries} tries")


def _plan_instruments(
    seed: int,
    per_class: int,
    split_fractions: Sequence[float],
    families: list[str],
    program_splits: dict[str, dict[str, list[int]]],
    soundfonts: dict[str, Path],
) -> list[Clip]:
    """Every instrument clip: its family, split, GM program (of that split), soundfont, level."""
    sf_names = sorted(soundfonts)
    clips: list[Clip] = []
    for fi, family in enumerate(families):
        i = 0
        for split, count in zip(SPLITS, _split_counts(per_class, split_fractions), strict=True):
            programs = program_splits[family][split]
            for _ in range(count):
                rng = _rng(seed, 3, fi, i)
                p = {
                    "program": int(programs[int(rng.integers(len(programs)))]),
                    "soundfont": sf_names[int(rng.integers(len(sf_names)))],
                    "level_db": float(rng.uniform(-28, -16)),
                    "_seed": (seed, 4, fi, i),
                }
                clips.append(Clip(f"wav/{split}/{family}/{family}_{i:04d}.wav", family, split, p))
                i += 1
    return clips


def build_instruments(
    out: str | os.PathLike,
    per_class: int = 60,
    seed: int = 0,
    *,
    clip_seconds: float = 2.0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    progress: bool = True,
) -> dict:
    """10 GM instrument families, 2 s notes from FluidR3_GM and TimGM6mb.

    Each family has 8 GM programs; 2 are test-only and 1 valid-only
    (:func:`ssamba.demo.sources.instrument_program_splits`), so test instruments are unseen in
    training (in both soundfonts). Random key within the program's range, velocity, duration and
    onset; loudness normalised to a random RMS level; silent renders are redrawn.
    """
    t0 = time.perf_counter()
    out, per_class, seed, clip_seconds = Path(out), int(per_class), int(seed), float(clip_seconds)
    soundfonts = S.find_soundfonts(require=True)
    S.require_tinysoundfont()
    program_splits = S.instrument_program_splits()
    families = list(S.GM_FAMILIES)
    spec = {
        "builder": "instruments",
        "version": BUILD_VERSION,
        "per_class": per_class,
        "seed": seed,
        "clip_seconds": clip_seconds,
        "split_fractions": list(split_fractions),
        "soundfonts": {k: str(v) for k, v in soundfonts.items()},
        "programs": program_splits,
    }
    _prepare_out(out, spec)
    clips = _plan_instruments(
        seed, per_class, split_fractions, families, program_splits, soundfonts
    )
    state: dict = {}

    def prepare(todo: Sequence[Clip]) -> None:
        state["renderer"] = S.NoteRenderer(soundfonts)

    def render(c: Clip) -> np.ndarray:
        p = c.params
        x, info = _render_note_clip(
            state["renderer"], p["soundfont"], p["program"], _rng(*p["_seed"]), clip_seconds
        )
        p.update(info)
        return normalise(x, p["level_db"])

    rendered, reused = _render_missing(out, clips, render, "instruments", progress, prepare)
    paths = _write_manifests(out, clips, ("program", "soundfont"))
    return _summary(
        "instruments",
        out,
        clips,
        clip_seconds,
        rendered,
        reused,
        time.perf_counter() - t0,
        [],
        families,
        paths,
        {
            "programs": program_splits,
            "sources": [f"{k} ({v})" for k, v in soundfonts.items()],
        },
    )


# --------------------------------------------------------------------------------------------------
# 3. Speaker identification (hedgewars voice packs)


def speaker_line_split(line: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Fixed split of a voice-pack line by its name (the same line is in one split in all packs)."""
    u = (_stable_id(line.lower()) % 10_000) / 10_000
    if u < fractions[0]:
        return "train"
    return "valid" if u < fractions[0] + fractions[1] else "test"


def build_speakers(
    out: str | os.PathLike,
    seed: int = 0,
    *,
    max_per_speaker: int | None = None,
    clip_seconds: float = 2.0,
    split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
    progress: bool = True,
) -> dict:
    """15-way speaker identification from the hedgewars voice-actor packs, 2 s crops.

    Lines are split by name (:func:`speaker_line_split`): a test line ("Amazing", "Coward", ...)
    is never heard in training from any speaker, so the task is the voice, not the words. Lines
    longer than ``clip_seconds`` are cropped at a random offset, shorter ones padded at a random
    offset; loudness is normalised to a random RMS level. ``max_per_speaker`` caps the lines per
    pack (kept in the same split proportions).
    """
    t0 = time.perf_counter()
    out, seed, clip_seconds = Path(out), int(seed), float(clip_seconds)
    packs = S.hedgewars_voice_packs(require=True)
    spec = {
        "builder": "speakers",
        "version": BUILD_VERSION,
        "seed": seed,
        "max_per_speaker": max_per_speaker,
        "clip_seconds": clip_seconds,
        "split_fractions": list(split_fractions),
        "packs": {k: len(v) for k, v in packs.items()},
    }
    _prepare_out(out, spec)
    clips: list[Clip] = []
    for pack, files in packs.items():
        chosen = list(files)
        if max_per_speaker is not None and len(chosen) > max_per_speaker:
            order = _rng(seed, 5, _stable_id(pack)).permutation(len(chosen))
            chosen = [chosen[k] for k in sorted(order[:max_per_speaker])]
        for f in chosen:
            split = speaker_line_split(f.stem, split_fractions)
            sid = _stable_id(f"{pack}/{f.stem}")
            label = pack.replace(" ", "_")
            p = {
                "source": str(f),
                "line": f.stem,
                "level_db": float(_rng(seed, 6, sid).uniform(-28, -16)),
                "_seed": (seed, 7, sid),
            }
            clips.append(Clip(f"wav/{split}/{label}/{f.stem}.wav", label, split, p))
    n = round(clip_seconds * SAMPLE_RATE)

    def render(c: Clip) -> np.ndarray:
        x = trim(S.read_segment(Path(c.params["source"])), threshold_db=-45)
        x, _ = fit(fade(x), n, _rng(*c.params["_seed"]))
        return normalise(x, c.params["level_db"])

    rendered, reused = _render_missing(out, clips, render, "speakers", progress)
    paths = _write_manifests(out, clips, ("line", "source"))
    classes = sorted({c.label for c in clips})
    return _summary(
        "speakers",
        out,
        clips,
        clip_seconds,
        rendered,
        reused,
        time.perf_counter() - t0,
        [],
        classes,
        paths,
        {"sources": [f"{len(packs)} hedgewars voice packs ({S.HEDGEWARS_VOICES})"]},
    )


# --------------------------------------------------------------------------------------------------
# 4. Unlabelled pretraining mix

_SUBJECTS = (
    "the old man", "my sister", "a small dog", "the teacher", "our neighbour", "the captain",
    "every child", "the farmer", "a tired student", "the pilot", "his brother", "the baker",
    "nobody", "the robot", "a quiet girl", "the driver",
)  # fmt: skip
_VERBS = (
    "carried", "painted", "found", "lost", "opened", "cleaned", "watched", "fixed", "bought",
    "sold", "dropped", "counted", "followed", "forgot", "borrowed", "described",
)  # fmt: skip
_OBJECTS = (
    "a blue bicycle", "the heavy box", "seven apples", "an ancient map", "the kitchen window",
    "a broken clock", "the morning paper", "twelve letters", "a wooden chair", "the red kite",
    "a strange noise", "the garden gate", "a bag of rice", "the silver key", "two tickets",
)  # fmt: skip
_TAILS = (
    "before lunch", "in the rain", "near the river", "after the meeting", "without a word",
    "on a cold evening", "at the station", "behind the house", "for the third time",
    "during the storm", "with great care", "last summer", "by the old bridge", "in a hurry",
)  # fmt: skip
_QUESTIONS = (
    "where did you put", "why would anyone want", "have you ever seen", "can we borrow",
    "who remembers", "how much did they pay for",
)  # fmt: skip


def random_sentence(rng: np.random.Generator, min_words: int = 6) -> str:
    """A random English sentence from a small grammar (for the TTS part of the pretraining mix)."""
    parts: list[str] = []
    while len(" ".join(parts).split()) < min_words:
        if rng.random() < 0.2:
            s = f"{rng.choice(_QUESTIONS)} {rng.choice(_OBJECTS)}?"
        else:
            s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
            if rng.random() < 0.7:
                s += f" {rng.choice(_TAILS)}"
            s += "."
        parts.append(s[0].upper() + s[1:])
    return " ".join(parts)


def pretrain_programs() -> list[int]:
    """GM programs the pretraining mix may use: the instrument task's training programs plus the
    families outside that task (synths, ethnic, percussive, effects: programs 80..127)."""
    progs = [p for fam in S.instrument_program_splits().values() for p in fam["train"]]
    return sorted(progs + list(range(80, 128)))


@dataclass
class _MixSources:
    """What the pretraining mix can draw from on this machine (and notes on what is missing)."""

    voices: list[S.Voice]
    soundfonts: dict[str, Path]
    recorded: dict[str, tuple[Path, ...]]
    notes: list[str]


def build_pretrain_mix(
    out: str | os.PathLike,
    minutes: float = 12.0,
    seed: int = 0,
    *,
    seconds: float = 2.0,
    shares: dict[str, float] | None = None,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Unlabelled pretraining corpus: ``minutes`` of ``seconds``-long clips.

    Five kinds (``shares``, default :data:`PRETRAIN_SHARES`, renormalised over the kinds whose
    sources are present): TTS sentences at a random speaking rate, pitch and speed; GM music (a
    note, a melodic phrase, chords with random voicings, an arpeggio or a drum pattern:
    :data:`ssamba.demo.signals.MUSIC_STYLES`); crops of real recordings, sped up or slowed down
    by resampling half the time; coloured noise (white/pink/brown, band-passed or in bursts at
    times); and mixtures of two clips of different kinds at a random level ratio.

    Exclusions, whatever the seed: speech uses the keywords task's training voices only, music the
    instruments task's training programs, programs 80..127 and the drum kits only, and recordings
    never include the hedgewars voice packs of the speakers task. So nothing of the labelled tasks'
    valid/test sets is heard in pretraining, apart from the keyword task's background noises (not
    what it labels).

    Clip ``i`` depends only on ``seed``, ``i``, ``seconds`` and the sources found, not on
    ``minutes``: a longer build extends a shorter one, and re-running with more ``minutes`` in
    the same folder renders only the new clips (fewer deletes the clips past the end). Rendering
    runs in ``workers`` processes.

    Writes ``manifest.txt`` (one relative path per line, read by ``read_manifest``; the result's
    ``"manifest"`` and ``"list"``) and ``meta.csv`` (path, kind, source, detail).
    """
    t0 = time.perf_counter()
    out, minutes, seed, seconds = Path(out), float(minutes), int(seed), float(seconds)
    src = _pretrain_sources()
    kinds, w = _pretrain_kinds(dict(shares or PRETRAIN_SHARES), src)
    spec = {
        "builder": "pretrain-mix",
        "version": MIX_BUILD_VERSION,
        "minutes": minutes,
        "seed": seed,
        "seconds": seconds,
        "kinds": dict(zip(kinds, w.round(6).tolist(), strict=True)),
        "voices": [v.key for v in src.voices],
        "soundfonts": {k: str(v) for k, v in src.soundfonts.items()},
        "recorded": {k: len(v) for k, v in src.recorded.items()},
    }
    if not _prepare_out(out, spec, growable=("minutes",)):
        (out / "meta.csv").unlink(missing_ok=True)  # its sources were another build's
    n_clips = max(1, round(minutes * 60 / seconds))
    clips = _plan_pretrain_mix(seed, n_clips, seconds, kinds, w, src)
    _delete_listed_wavs(out, keep=[c.path for c in clips])  # a shorter build than the last
    todo = [c for c in clips if not (out / c.path).exists()]
    # listed before rendering, so that an interrupted build's files are known to the next one
    _write_mix_meta(out / "meta.csv", clips, {})
    made = _render_mix(out, todo, src, seconds, workers, progress)
    _write_mix_meta(out / "meta.csv", clips, made)
    list_path = out / "manifest.txt"
    _write_text_if_changed(list_path, "".join(c.path + "\n" for c in clips))
    return _summary(
        "pretrain-mix",
        out,
        [Clip(c.path, c.params["kind"], "pretrain") for c in clips],
        seconds,
        len(todo),
        len(clips) - len(todo),
        time.perf_counter() - t0,
        src.notes,
        None,
        {"manifest": list_path, "list": list_path, "meta": out / "meta.csv"},
        {
            "kinds": dict(Counter(c.params["kind"] for c in clips)),
            "sources": _tts_sources({"train": src.voices})
            + [f"soundfont {k}" for k in src.soundfonts]
            + [f"{k}: {len(v)} recordings" for k, v in src.recorded.items()],
        },
    )


def _pretrain_sources() -> _MixSources:
    """Training voices, soundfonts (when tinysoundfont can render them) and recordings found."""
    notes: list[str] = []
    voices = S.voices_by_split(require=False)["train"]
    soundfonts = S.find_soundfonts(require=False)
    recorded = {p: f for p, f in S.recorded_files().items() if f}
    try:
        S.require_tinysoundfont()
    except S.MissingSourceError as e:
        soundfonts = {}
        notes.append(f"no music: {e}")
    if not voices:
        notes.append(f"no speech: install {S.apt_command('espeak-ng', 'flite')}")
    if not soundfonts:
        notes.append(
            f"no music: install {S.apt_command(*S.SOUNDFONTS.values())} and {S.PIP_INSTALL_COMMAND}"
        )
    notes += _missing_recordings_note() + _tts_notes()
    return _MixSources(voices, soundfonts, recorded, notes)


def _part_kinds(src: _MixSources) -> list[str]:
    """The kinds a clip (or a mixture's part) can be here: noise is always possible."""
    found = {"speech": src.voices, "music": src.soundfonts, "recorded": src.recorded, "noise": 1}
    return [k for k in MIX_PART_KINDS if found[k]]


def _pretrain_kinds(shares: dict[str, float], src: _MixSources) -> tuple[list[str], np.ndarray]:
    """The kinds of clip the mix can have here, and their shares renormalised over them."""
    unknown = set(shares) - set(PRETRAIN_SHARES)
    if unknown:
        raise UsageError(f"unknown kinds of the pretraining mix: {sorted(unknown)}")
    parts = _part_kinds(src)
    if parts == ["noise"]:
        raise S.MissingSourceError("any audio source for the pretraining mix", "espeak-ng")
    available = set(parts) | {"mixture"}
    kinds = [k for k in shares if k in available and shares[k] > 0]
    if not kinds:
        raise UsageError(f"no kind of the pretraining mix has a positive share: {shares}")
    w = np.array([shares[k] for k in kinds], dtype=np.float64)
    return kinds, w / w.sum()


@dataclass
class _MixPlanner:
    """Draws what one clip (or one part of a mixture) of the mix is made of."""

    src: _MixSources
    seconds: float
    pools: dict[str, list[S.Voice]] = field(init=False)
    programs: list[int] = field(init=False)
    package_weights: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.pools = _engine_pools(self.src.voices)
        self.programs = pretrain_programs()
        # a package is drawn in proportion to the square root of its hours of audio
        hours = [
            sum(S.audio_info(f)[0] / S.audio_info(f)[1] for f in self.src.recorded[k])
            for k in sorted(self.src.recorded)
        ]
        self.package_weights = np.sqrt(np.array(hours, dtype=np.float64))

    def part(self, kind: str, rng: np.random.Generator) -> dict:
        if kind == "speech":
            voice = _pick_voice(self.pools, rng)
            text = random_sentence(rng, min_words=int(self.seconds * 2.5) + 1)
            rate = round(float(rng.uniform(*SPEECH_RATE)), 3)
            pitch = round(float(rng.uniform(*SPEECH_PITCH)), 3)
            request = S.TTSRequest(voice, text, rate=rate, pitch=pitch)
            speed = float(rng.uniform(*SPEECH_SPEED))
            return {"kind": kind, "_request": request, "speed": speed, "source": voice.key}
        if kind == "music":
            style = weighted_choice(list(MUSIC_STYLES), MUSIC_STYLES, rng)
            pool = DRUM_KITS if style == "drums" else self.programs
            program = int(pool[int(rng.integers(len(pool)))])
            soundfonts = sorted(self.src.soundfonts)
            sfn = soundfonts[int(rng.integers(len(soundfonts)))]
            name = f"drum kit {program}" if style == "drums" else str(program)
            return {"kind": kind, "style": style, "program": program, "soundfont": sfn,
                    "source": f"{sfn}:{name}"}  # fmt: skip
        if kind == "recorded":
            packages = sorted(self.src.recorded)
            w = self.package_weights
            package = packages[int(rng.choice(len(packages), p=w / w.sum()))]
            speed = 1.0
            if rng.random() < RECORDED_SPEED_PROB:
                speed = float(np.exp(rng.uniform(*np.log(RECORDED_SPEED))))
            return {"kind": kind, "package": package, "speed": speed}
        return {"kind": "noise", "source": "synthetic"}

    def mixture(self, rng: np.random.Generator, shares: dict[str, float]) -> dict:
        """Two parts of different kinds, drawn by their shares (any two kinds, evenly, when
        fewer than two have a share), the second at a random level ratio."""
        kinds = [k for k in _part_kinds(self.src) if shares.get(k, 0.0) > 0]
        w = np.array([shares[k] for k in kinds])
        if len(kinds) < 2:
            kinds = _part_kinds(self.src)
            w = np.ones(len(kinds))
        pair = rng.choice(len(kinds), size=2, replace=False, p=w / w.sum())
        parts = [self.part(kinds[int(j)], rng) for j in pair]
        return {"kind": "mixture", "parts": parts, "ratio_db": float(rng.uniform(*MIX_RATIO_DB))}


def _plan_pretrain_mix(
    seed: int, n_clips: int, seconds: float, kinds: list[str], w: np.ndarray, src: _MixSources
) -> list[Clip]:
    """Every clip of the mix: its kind and what it is made of (voice, sentence, rate and pitch;
    GM program, soundfont and style; the package whose recordings it crops; or two parts).

    Clip ``i`` draws from ``_rng(seed, 8, i)`` only, so it is the same in any ``n_clips``."""
    planner = _MixPlanner(src, seconds)
    shares = dict(zip(kinds, w, strict=True))
    clips: list[Clip] = []
    for i in range(n_clips):
        rng = _rng(seed, 8, i)
        kind = kinds[int(rng.choice(len(kinds), p=w))]
        level = float(rng.uniform(*MIX_LEVEL_DB))
        p = planner.mixture(rng, shares) if kind == "mixture" else planner.part(kind, rng)
        p.update(level_db=level, _seed=(seed, 9, i))
        for j, part in enumerate(p.get("parts", ())):
            part["_seed"] = (seed, 9, i, j)
        clips.append(Clip(f"wav/{kind}/{kind}_{i:05d}.wav", "", "pretrain", p))
    return clips


def _mix_requests(clips: Sequence[Clip]) -> list[S.TTSRequest]:
    parts = [q for c in clips for q in (c.params, *c.params.get("parts", ()))]
    return [q["_request"] for q in parts if "_request" in q]


def _render_mix(
    out: Path, todo: Sequence[Clip], src: _MixSources, seconds: float, workers: int, progress: bool
) -> dict[str, tuple[str, str]]:
    """Render and write ``todo`` in chunks of :data:`MIX_CHUNK` on ``workers`` threads; returns
    ``{path: (source, detail)}``.

    Threads, not processes: most of the time goes to the TTS programs (subprocesses) and to
    writing files, which release the GIL; the soundfont synth is shared under a lock."""
    chunks = [todo[k : k + MIX_CHUNK] for k in range(0, len(todo), MIX_CHUNK)]
    worker = _MixWorker(out, src.soundfonts, src.recorded, seconds)
    made: dict[str, tuple[str, str]] = {}
    with _progress(len(todo), "pretrain-mix", progress) as bar:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for done in as_completed([pool.submit(worker.chunk, c) for c in chunks]):
                result = done.result()
                made.update(result)
                bar.update(len(result))
    return made


class _MixWorker:
    """Synthesizes, renders and writes chunks of the mix; threads share one (locked) synth,
    loaded on first use."""

    def __init__(self, out: Path, soundfonts: dict, recorded: dict, seconds: float):
        self.out, self.soundfonts, self.recorded = Path(out), soundfonts, recorded
        self.seconds, self.n = seconds, round(seconds * SAMPLE_RATE)
        self._notes: S.NoteRenderer | None = None
        self._lock = threading.Lock()

    def chunk(self, clips: Sequence[Clip]) -> dict[str, tuple[str, str]]:
        raw = _synthesize_in_turn(_mix_requests(clips))
        made = {}
        for c in clips:
            x, source, detail = self.clip(c.params, raw)
            write_wav(self.out / c.path, normalise(x, c.params["level_db"]))
            made[c.path] = (source, detail)
        return made

    def clip(self, p: dict, raw: dict) -> tuple[np.ndarray, str, str]:
        """One clip or part at any level -> (wave, source, detail)."""
        rng = _rng(*p["_seed"])
        kind = p["kind"]
        if kind == "mixture":
            (a, sa, da), (b, sb, db_) = (self.clip(q, raw) for q in p["parts"])
            x = a / (rms(a) + 1e-12) + b / (rms(b) + 1e-12) * db(p["ratio_db"])
            ka, kb = (q["kind"] for q in p["parts"])
            detail = f"{ka}: {da}; {kb}: {db_}; ratio {p['ratio_db']:+.1f} dB"
            return x, f"{ka}={sa} | {kb}={sb}", detail
        if kind == "speech":
            req = p["_request"]
            wave, sr = raw[req]
            x, _ = fit(fade(trim(_tts_to_16k(wave, sr, p["speed"]))), self.n, rng)
            detail = f"rate {req.rate:g} pitch {req.pitch:g} speed {p['speed']:.3f}"
            return x, req.voice.key, detail
        if kind == "music":
            with self._lock:
                if self._notes is None:
                    self._notes = S.NoteRenderer(self.soundfonts)
                x, info = _render_note_clip(
                    self._notes, p["soundfont"], p["program"], rng, self.seconds, p["style"]
                )
            return x, p["source"], f"{p['style']}, {info['notes']} notes"
        if kind == "recorded":
            return self.recorded_crop(p, rng)
        x, detail = shaped_noise(self.n, rng)
        return x, p["source"], detail

    def recorded_crop(self, p: dict, rng: np.random.Generator) -> tuple[np.ndarray, str, str]:
        """A crop of a random recording of the package, at ``p["speed"]`` (one resampling:
        decoding to 16 kHz / speed and playing at 16 kHz); (nearly) silent crops are redrawn."""
        files, speed = self.recorded[p["package"]], p["speed"]
        span = self.seconds * speed
        for _ in range(10):
            f = files[int(rng.integers(len(files)))]
            frames, sr = S.audio_info(f)
            start = float(rng.uniform(0, max(frames / sr - span, 0)))
            x = S.read_segment(f, start, span, sample_rate=round(SAMPLE_RATE / speed))
            x, _ = fit(fade(x), self.n, rng)
            if rms(x) > 3e-3:
                break
        return x, str(f), f"from {start:.2f} s, speed {speed:.3f}"


def _synthesize_in_turn(reqs: Sequence[S.TTSRequest]) -> dict:
    """Synthesize unique requests one after the other (festival batched per voice)."""
    unique = list(dict.fromkeys(reqs))
    fest = [r for r in unique if r.voice.engine == "festival"]
    results = dict(zip(fest, S.synthesize_festival_batch(fest), strict=True)) if fest else {}
    results.update((r, S.synthesize(r)) for r in unique if r.voice.engine != "festival")
    return results


def _write_mix_meta(path: Path, clips: Sequence[Clip], made: dict[str, tuple[str, str]]) -> None:
    """path, kind, source, detail; the source and detail of a clip are known once rendered, so
    those of clips reused from an earlier run are kept from its ``meta.csv``."""
    old: dict[str, tuple[str, str]] = {}
    if path.exists():
        with path.open(newline="") as f:
            old = {r["path"]: (r.get("source", ""), r.get("detail", "")) for r in csv.DictReader(f)}
    rows = []
    for c in clips:
        source, detail = made.get(c.path) or old.get(c.path) or (c.params.get("source", ""), "")
        rows.append((c.path, c.params["kind"], source, detail))
    _write_text_if_changed(
        path, csv_text(("path", "kind", "source", "detail"), rows, line_end="\n")
    )

"""Deterministic builders of the demo's data sets from real offline audio (see :mod:`.sources`).

Each builder writes 16 kHz mono 16-bit WAVs under ``out`` and CSV manifests ``path,label,split``
with paths relative to ``out`` (readable by :func:`ssamba.data.read_manifest`):

- ``manifest.csv`` (every split, ``split`` column), ``train.csv``, ``valid.csv``, ``test.csv``;
- ``meta.csv``: the same rows plus how each clip was made (voice, program, SNR, ...);
- ``build.json``: the arguments and source inventory of the build.

Everything a clip is made of is drawn from ``numpy.random.default_rng([seed, task, ...])`` seeded
per clip, so a clip does not depend on which other clips are (re)built. Re-running with the same
arguments reuses the WAVs already there (an interrupted build resumes); different arguments first
delete the files the previous build listed in its ``meta.csv`` (and nothing else).

Hold-outs are fixed, whatever the seed (:mod:`.sources`): keyword test/valid voices, instrument
test/valid programs and speaker test/valid lines never appear in training, and the pretraining
mix uses only training voices and programs and no hedgewars voice-pack line.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ssamba.constants import SAMPLE_RATE
from ssamba.demo import sources as S
from ssamba.fileio import atomic_write_bytes, atomic_write_text

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
#: Shares of the pretraining mix (renormalised over the kinds whose sources are present).
PRETRAIN_SHARES = {"speech": 0.35, "music": 0.30, "recorded": 0.35}


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


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _prepare_out(out: Path, spec: dict) -> bool:
    """Create ``out``; True when a previous build with the same spec may be reused.

    When ``build.json`` differs, the WAVs listed in the old ``meta.csv`` are deleted first.
    """
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "build.json"
    text = json.dumps(spec, indent=2, sort_keys=True) + "\n"
    if spec_path.exists():
        if spec_path.read_text() == text:
            return True
        meta = out / "meta.csv"
        if meta.exists():
            with meta.open(newline="") as f:
                for row in csv.DictReader(f):
                    p = (out / row["path"]).resolve()
                    if out.resolve() in p.parents and p.suffix == ".wav":
                        p.unlink(missing_ok=True)
    _write_text_if_changed(spec_path, text)
    return False


def _write_manifests(out: Path, clips: Sequence[Clip], meta_keys: Sequence[str]) -> dict:
    rows = [(c.path, c.label, c.split) for c in clips]
    paths = {"manifest": out / "manifest.csv"}
    _write_text_if_changed(paths["manifest"], _csv_text(("path", "label", "split"), rows))
    for split in SPLITS:
        paths[split] = out / f"{split}.csv"
        sub = [r for r in rows if r[2] == split]
        _write_text_if_changed(paths[split], _csv_text(("path", "label", "split"), sub))
    meta_rows = [
        (c.path, c.label, c.split, *(_fmt(c.params.get(k, "")) for k in meta_keys)) for c in clips
    ]
    paths["meta"] = out / "meta.csv"
    _write_text_if_changed(
        paths["meta"], _csv_text(("path", "label", "split", *meta_keys), meta_rows)
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
# Signal helpers


def _db(x: float) -> float:
    return 10 ** (x / 20.0)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def _trim(x: np.ndarray, threshold_db: float = -35.0, frame: int = 160) -> np.ndarray:
    """Cut leading/trailing frames quieter than ``threshold_db`` below the loudest frame."""
    n = len(x) // frame
    if n == 0:
        return x
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)) + 1e-10
    loud = np.nonzero(20 * np.log10(e / e.max()) > threshold_db)[0]
    if len(loud) == 0:
        return x[:0]
    return x[loud[0] * frame : (loud[-1] + 1) * frame]


def _fade(x: np.ndarray, n: int = 160) -> np.ndarray:
    x = x.copy()
    n = min(n, len(x) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _fit(x: np.ndarray, length: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Place ``x`` at a random offset in ``length`` zeros, or take a random window of it."""
    out = np.zeros(length, np.float32)
    if len(x) >= length:
        start = int(rng.integers(0, len(x) - length + 1))
        out[:] = x[start : start + length]
        return out, -start
    offset = int(rng.integers(0, length - len(x) + 1))
    out[offset : offset + len(x)] = x
    return out, offset


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-exponent / 2.0)
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    return (x / (_rms(x) + 1e-12)).astype(np.float32)


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
            if len(x) == n and _rms(x) > 1e-3:
                return (x / _rms(x)).astype(np.float32)
        kind = "pink"
    if kind == "hum":
        t = np.arange(n) / SAMPLE_RATE
        base = 50.0 if rng.random() < 0.5 else 60.0
        phase = rng.uniform(0, 2 * np.pi, 6)
        x = sum(np.sin(2 * np.pi * base * (k + 1) * t + phase[k]) / (k + 1) for k in range(6))
        x = x / (_rms(x) + 1e-12) + 0.5 * coloured_noise(n, 1.0, rng)
        return (x / _rms(x)).astype(np.float32)
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
        return noise * _db(p["level_db"])
    wave, sr = raw[p["_request"]]
    speech = _trim(_tts_to_16k(wave, sr, p["speed"]))
    if len(speech) == 0:
        speech = np.zeros(1, np.float32)
    speech = _fade(speech[:n])
    speech = speech / (np.abs(speech).max() + 1e-9) * _db(p["level_db"])
    level = _rms(speech)
    placed, p["offset"] = _fit(speech, n, rng)
    mix = placed + noise * level / _db(p["snr_db"])
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
    phrase: bool = False,
    tries: int = 12,
) -> tuple[np.ndarray, dict]:
    """A note (or short phrase) with energy: redraws key/velocity while the preset is silent."""
    lo, hi = S.program_key_range(program)
    for attempt in range(tries):
        if attempt >= tries // 2:  # narrow to the middle of the range after failures
            mid = (lo + hi) // 2
            lo, hi = max(lo, mid - 6), min(hi, mid + 6)
        if phrase:
            notes, t = [], float(rng.uniform(0, 0.15))
            root = int(rng.integers(lo, hi + 1))
            scale = np.array([0, 2, 4, 5, 7, 9, 11, 12])
            while t < seconds - 0.2:
                dur = float(rng.choice([0.125, 0.25, 0.25, 0.375, 0.5]))
                key = int(np.clip(root + rng.choice(scale) - 5, lo, hi))
                vel = int(rng.integers(50, 128))
                notes.append((t, dur * 0.9, key, vel))
                if rng.random() < 0.2:  # a dyad now and then
                    notes.append((t, dur * 0.9, int(np.clip(key + 4, lo, hi)), vel))
                t += dur
        else:
            start = float(rng.uniform(0, 0.15))
            dur = float(rng.uniform(0.3, min(1.6, seconds - start)))
            key, vel = int(rng.integers(lo, hi + 1)), int(rng.integers(60, 128))
            notes = [(start, dur, key, vel)]
        x = renderer.render(soundfont, program, notes, seconds)
        if np.all(np.isfinite(x)) and _rms(x) > 1e-3 and np.abs(x).max() > 5e-3:
            return x, {"key": notes[0][2], "velocity": notes[0][3], "notes": len(notes)}
    raise RuntimeError(f"{soundfont} program {program}: silent after {tries} tries")


def _normalise(x: np.ndarray, level_db: float) -> np.ndarray:
    x = x * (_db(level_db) / (_rms(x) + 1e-12))
    peak = np.abs(x).max()
    return x / peak * 0.99 if peak > 0.99 else x


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
        return _normalise(x, p["level_db"])

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
        x = _trim(S.read_segment(Path(c.params["source"])), threshold_db=-45)
        x, _ = _fit(_fade(x), n, _rng(*c.params["_seed"]))
        return _normalise(x, c.params["level_db"])

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

    Three kinds (``shares``, default :data:`PRETRAIN_SHARES`): TTS sentences (training voices of
    the keywords task only), GM notes and short phrases (training programs of the instruments
    task and programs 80..127 only), and random crops of real recordings (effects, ambience and
    music of the Debian packages present; the hedgewars voice packs of the speakers task are
    excluded). So nothing of the labelled tasks' valid/test sets is seen in pretraining, apart
    from the keyword task's background noises (not what it labels).

    Writes ``manifest.txt`` (one relative path per line, read by ``read_manifest``; the result's
    ``"manifest"`` and ``"list"``) and ``meta.csv`` (path, kind, source).
    """
    t0 = time.perf_counter()
    out, minutes, seed, seconds = Path(out), float(minutes), int(seed), float(seconds)
    src = _pretrain_sources()
    kinds, w = _pretrain_kinds(dict(shares or PRETRAIN_SHARES), src)
    spec = {
        "builder": "pretrain-mix",
        "version": BUILD_VERSION,
        "minutes": minutes,
        "seed": seed,
        "seconds": seconds,
        "kinds": dict(zip(kinds, w.round(6).tolist(), strict=True)),
        "voices": [v.key for v in src.voices],
        "soundfonts": {k: str(v) for k, v in src.soundfonts.items()},
        "recorded": {k: len(v) for k, v in src.recorded.items()},
    }
    _prepare_out(out, spec)
    n_clips = max(1, round(minutes * 60 / seconds))
    clips = _plan_pretrain_mix(seed, n_clips, seconds, kinds, w, src)
    raw: dict = {}
    state: dict = {}

    def prepare(todo: Sequence[Clip]) -> None:
        if any(c.params["kind"] == "music" for c in todo):
            state["renderer"] = S.NoteRenderer(src.soundfonts)
        raw.update(_synthesize_all(_tts_requests(todo), workers, progress, "pretrain-mix: TTS"))

    def render(c: Clip) -> np.ndarray:
        return _render_mix_clip(c, raw, state.get("renderer"), src.recorded, seconds)

    rendered, reused = _render_missing(out, clips, render, "pretrain-mix", progress, prepare)
    list_path = out / "manifest.txt"
    _write_text_if_changed(list_path, "".join(c.path + "\n" for c in clips))
    meta_rows = [(c.path, c.params["kind"], c.params.get("source", "")) for c in clips]
    # sources of recorded clips are only known once rendered: keep a previous meta's entries
    _write_meta_preserving(out / "meta.csv", meta_rows)
    kinds_count = Counter(c.params["kind"] for c in clips)
    clips_by_kind = [Clip(c.path, c.params["kind"], "pretrain") for c in clips]
    return _summary(
        "pretrain-mix",
        out,
        clips_by_kind,
        seconds,
        rendered,
        reused,
        time.perf_counter() - t0,
        src.notes,
        None,
        {"manifest": list_path, "list": list_path, "meta": out / "meta.csv"},
        {
            "kinds": dict(kinds_count),
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


def _pretrain_kinds(shares: dict[str, float], src: _MixSources) -> tuple[list[str], np.ndarray]:
    """The kinds of clip the mix can have here, and their shares renormalised over them."""
    available = {
        "speech": bool(src.voices),
        "music": bool(src.soundfonts),
        "recorded": bool(src.recorded),
    }
    kinds = [k for k in shares if available.get(k) and shares[k] > 0]
    if not kinds:
        raise S.MissingSourceError("any audio source for the pretraining mix", "espeak-ng")
    w = np.array([shares[k] for k in kinds], dtype=np.float64)
    return kinds, w / w.sum()


def _plan_pretrain_mix(
    seed: int, n_clips: int, seconds: float, kinds: list[str], w: np.ndarray, src: _MixSources
) -> list[Clip]:
    """Every clip of the mix: its kind and what it is made of (voice and sentence, GM program
    and soundfont, or the package whose recordings it crops)."""
    pools = _engine_pools(src.voices)
    programs = pretrain_programs()
    sf_names = sorted(src.soundfonts)
    packages = sorted(src.recorded)
    # a package is drawn in proportion to the square root of its hours of audio
    pkg_w = np.array(
        [
            np.sqrt(sum(S.audio_info(f)[0] / S.audio_info(f)[1] for f in src.recorded[k]))
            for k in packages
        ]
    )
    clips: list[Clip] = []
    for i in range(n_clips):
        rng = _rng(seed, 8, i)
        kind = kinds[int(rng.choice(len(kinds), p=w))]
        p: dict = {"kind": kind, "_seed": (seed, 9, i), "level_db": float(rng.uniform(-28, -14))}
        if kind == "speech":
            voice = _pick_voice(pools, rng)
            text = random_sentence(rng, min_words=int(seconds * 2.5) + 1)
            p.update(
                source=voice.key,
                _request=S.TTSRequest(
                    voice,
                    text,
                    rate=round(float(rng.uniform(0.85, 1.25)), 3),
                    pitch=round(float(rng.uniform(0.8, 1.3)), 3),
                ),
                speed=float(rng.uniform(0.95, 1.05)),
            )
        elif kind == "music":
            prog = programs[int(rng.integers(len(programs)))]
            sfn = sf_names[int(rng.integers(len(sf_names)))]
            p.update(program=prog, soundfont=sfn, phrase=bool(rng.random() < 0.5))
            p["source"] = f"{sfn}:{prog}"
        else:
            pkg = packages[int(rng.choice(len(packages), p=pkg_w / pkg_w.sum()))]
            p["package"] = pkg
        clips.append(Clip(f"wav/{kind}/{kind}_{i:05d}.wav", "", "pretrain", p))
    return clips


def _render_mix_clip(
    c: Clip,
    raw: dict,
    renderer: S.NoteRenderer | None,
    recorded: dict[str, tuple[Path, ...]],
    seconds: float,
) -> np.ndarray:
    """One clip of the mix: synthesized speech, a rendered note/phrase or a recording's crop."""
    n = round(seconds * SAMPLE_RATE)
    p = c.params
    rng = _rng(*p["_seed"])
    if p["kind"] == "speech":
        wave, sr = raw[p["_request"]]
        x = _fade(_trim(_tts_to_16k(wave, sr, p["speed"])))
        x, _ = _fit(x, n, rng)
    elif p["kind"] == "music":
        x, _ = _render_note_clip(renderer, p["soundfont"], p["program"], rng, seconds, p["phrase"])
    else:
        files = recorded[p["package"]]
        for _ in range(10):  # redraw crops that are (nearly) silent
            f = files[int(rng.integers(len(files)))]
            frames, sr = S.audio_info(f)
            start = float(rng.uniform(0, max(frames / sr - seconds, 0)))
            x, _ = _fit(_fade(S.read_segment(f, start, seconds)), n, rng)
            if _rms(x) > 3e-3:
                break
        p["source"] = str(f)
    return _normalise(x, p["level_db"])


def _write_meta_preserving(path: Path, rows: list[tuple[str, str, str]]) -> None:
    old = {}
    if path.exists():
        with path.open(newline="") as f:
            old = {r["path"]: r["source"] for r in csv.DictReader(f)}
    rows = [(p, k, s or old.get(p, "")) for p, k, s in rows]
    _write_text_if_changed(path, _csv_text(("path", "kind", "source"), rows))

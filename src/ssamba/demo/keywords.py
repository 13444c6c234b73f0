"""The keyword-spotting set: ten keywords, unknown words and silence, spoken by TTS voices over
background noise (``ssamba data keywords``)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssamba.constants import SAMPLE_RATE
from ssamba.demo import sources as S
from ssamba.demo.build_common import (
    BUILD_VERSION,
    DEFAULT_SPLIT_FRACTIONS,
    NOISE_KINDS,
    SPLITS,
    Clip,
    ambience_files,
    clip_rng,
    finish_labelled_build,
    make_noise,
    missing_recordings_note,
    prepare_out,
    split_counts,
)
from ssamba.demo.signals import (
    db,
    fade,
    fit,
    rms,
    trim,
)
from ssamba.demo.tts import (
    engine_pools,
    pick_voice,
    synthesize_all,
    tts_notes,
    tts_requests,
    tts_sources,
    tts_to_16k,
)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine",
    "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "learn", "follow",
    "forward", "backward", "visual", "bottle", "garden", "yellow", "window", "paper", "river",
    "button", "money", "open", "close", "start", "under", "over", "maybe", "hello",
)  # fmt: skip
KEYWORD_CLASSES = (*KEYWORDS, "unknown", "silence")


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
    pools = {s: engine_pools(by_split[s]) for s in SPLITS}
    ambience = ambience_files()
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
    prepare_out(out, spec)
    n = round(clip_seconds * SAMPLE_RATE)
    clips = _plan_keywords(seed, per_class, split_fractions, pools, bool(ambience), snr_db)
    raw: dict = {}

    def prepare(todo: Sequence[Clip]) -> None:
        raw.update(synthesize_all(tts_requests(todo), workers, progress, "keywords: TTS"))

    def render(c: Clip) -> np.ndarray:
        return _render_keyword(c, n, raw, ambience)

    extra = {
        "voices": {s: len(by_split[s]) for s in SPLITS},
        "sources": tts_sources(by_split) + [f"{len(ambience)} ambience recordings"],
    }
    return finish_labelled_build(
        "keywords", out, clips, render, started=t0, clip_seconds=clip_seconds,
        meta_keys=("word", "voice", "speaker", "snr_db", "noise"), classes=KEYWORD_CLASSES,
        notes=tts_notes() + missing_recordings_note(), extra=extra, progress=progress,
        prepare=prepare, desc="keywords: clips",
    )  # fmt: skip


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
        counts = split_counts(per_class, split_fractions)
        i = 0
        for split, count in zip(SPLITS, counts, strict=True):
            for _ in range(count):
                rng = clip_rng(seed, 1, ci, i)
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
    voice = pick_voice(pools, rng)
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
    rng = clip_rng(*p["_seed"])
    noise = make_noise(p["noise"], n, rng, ambience)
    if c.label == "silence":
        return noise * db(p["level_db"])
    wave, sr = raw[p["_request"]]
    speech = trim(tts_to_16k(wave, sr, p["speed"]))
    if len(speech) == 0:
        speech = np.zeros(1, np.float32)
    speech = fade(speech[:n])
    speech = speech / (np.abs(speech).max() + 1e-9) * db(p["level_db"])
    level = rms(speech)
    placed, p["offset"] = fit(speech, n, rng)
    mix = placed + noise * level / db(p["snr_db"])
    peak = np.abs(mix).max()
    return mix / peak * 0.99 if peak > 0.99 else mix

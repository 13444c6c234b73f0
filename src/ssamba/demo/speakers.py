"""The speaker-identification set: lines of the hedgewars voice packs, one class per voice
(``ssamba data speakers``)."""

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
    Clip,
    clip_rng,
    finish_labelled_build,
    prepare_out,
    stable_id,
)
from ssamba.demo.signals import (
    fade,
    fit,
    normalise,
    trim,
)


def speaker_line_split(line: str, fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS) -> str:
    """Fixed split of a voice-pack line by its name (the same line is in one split in all packs)."""
    u = (stable_id(line.lower()) % 10_000) / 10_000
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
    prepare_out(out, spec)
    clips: list[Clip] = []
    for pack, files in packs.items():
        chosen = list(files)
        if max_per_speaker is not None and len(chosen) > max_per_speaker:
            order = clip_rng(seed, 5, stable_id(pack)).permutation(len(chosen))
            chosen = [chosen[k] for k in sorted(order[:max_per_speaker])]
        for f in chosen:
            split = speaker_line_split(f.stem, split_fractions)
            sid = stable_id(f"{pack}/{f.stem}")
            label = pack.replace(" ", "_")
            p = {
                "source": str(f),
                "line": f.stem,
                "level_db": float(clip_rng(seed, 6, sid).uniform(-28, -16)),
                "_seed": (seed, 7, sid),
            }
            clips.append(Clip(f"wav/{split}/{label}/{f.stem}.wav", label, split, p))
    n = round(clip_seconds * SAMPLE_RATE)

    def render(c: Clip) -> np.ndarray:
        x = trim(S.read_segment(Path(c.params["source"])), threshold_db=-45)
        x, _ = fit(fade(x), n, clip_rng(*c.params["_seed"]))
        return normalise(x, c.params["level_db"])

    sources = [f"{len(packs)} hedgewars voice packs ({S.HEDGEWARS_VOICES})"]
    return finish_labelled_build(
        "speakers", out, clips, render, started=t0, clip_seconds=clip_seconds,
        meta_keys=("line", "source"), classes=sorted({c.label for c in clips}),
        progress=progress, extra={"sources": sources},
    )  # fmt: skip

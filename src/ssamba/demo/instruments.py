"""The instrument-family set: notes of sampled General MIDI programs rendered from soundfonts
(``ssamba data instruments``)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssamba.demo import sources as S
from ssamba.demo.build_common import (
    BUILD_VERSION,
    DEFAULT_SPLIT_FRACTIONS,
    SPLITS,
    Clip,
    clip_rng,
    finish_labelled_build,
    prepare_out,
    split_counts,
)
from ssamba.demo.signals import (
    music_notes,
    normalise,
    rms,
)


def render_note_clip(
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
        for split, count in zip(SPLITS, split_counts(per_class, split_fractions), strict=True):
            programs = program_splits[family][split]
            for _ in range(count):
                rng = clip_rng(seed, 3, fi, i)
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
    prepare_out(out, spec)
    clips = _plan_instruments(
        seed, per_class, split_fractions, families, program_splits, soundfonts
    )
    state: dict = {}

    def prepare(todo: Sequence[Clip]) -> None:
        state["renderer"] = S.NoteRenderer(soundfonts)

    def render(c: Clip) -> np.ndarray:
        p = c.params
        x, info = render_note_clip(
            state["renderer"], p["soundfont"], p["program"], clip_rng(*p["_seed"]), clip_seconds
        )
        p.update(info)
        return normalise(x, p["level_db"])

    sources = [f"{k} ({v})" for k, v in soundfonts.items()]
    return finish_labelled_build(
        "instruments", out, clips, render, started=t0, clip_seconds=clip_seconds,
        meta_keys=("program", "soundfont"), classes=families, progress=progress, prepare=prepare,
        extra={"programs": program_splits, "sources": sources},
    )  # fmt: skip

"""Text-to-speech rendering shared by the keyword set and the pretraining mix: voices drawn per
engine, synthesis of many requests in threads, resampling to 16 kHz (:mod:`.sources` runs the
engines)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ssamba.constants import SAMPLE_RATE
from ssamba.demo import sources as S
from ssamba.demo.build_common import Clip, progress_bar

#: Share of each TTS engine in a split's voices (renormalised over the engines present).
ENGINE_WEIGHTS = {"espeak": 0.6, "flite": 0.3, "festival": 0.1}


def tts_requests(clips: Sequence[Clip]) -> list[S.TTSRequest]:
    return [c.params["_request"] for c in clips if "_request" in c.params]


def synthesize_all(
    reqs: Sequence[S.TTSRequest], workers: int, progress: bool, desc: str
) -> dict[S.TTSRequest, tuple[np.ndarray, int]]:
    """Synthesize unique requests: espeak/flite in a thread pool, festival batched per voice."""
    unique = list(dict.fromkeys(reqs))
    results: dict[S.TTSRequest, tuple[np.ndarray, int]] = {}
    fest = [r for r in unique if r.voice.engine == "festival"]
    rest = [r for r in unique if r.voice.engine != "festival"]
    with progress_bar(len(unique), desc, progress) as bar:
        if fest:
            for r, res in zip(fest, S.synthesize_festival_batch(fest), strict=True):
                results[r] = res
            bar.update(len(fest))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for r, res in zip(rest, pool.map(S.synthesize, rest), strict=True):
                results[r] = res
                bar.update()
    return results


def tts_to_16k(wave: np.ndarray, sr: int, speed: float) -> np.ndarray:
    """Resample to 16 kHz, reading the wave as if recorded at ``sr * speed`` (pitch + tempo)."""
    return S.resample(wave, sr * speed, SAMPLE_RATE)


def pick_voice(pools: dict[str, list[S.Voice]], rng: np.random.Generator) -> S.Voice:
    engines = [e for e in ENGINE_WEIGHTS if pools.get(e)]
    w = np.array([ENGINE_WEIGHTS[e] for e in engines])
    engine = engines[int(rng.choice(len(engines), p=w / w.sum()))]
    pool = pools[engine]
    return pool[int(rng.integers(len(pool)))]


def engine_pools(voices: Sequence[S.Voice]) -> dict[str, list[S.Voice]]:
    pools: dict[str, list[S.Voice]] = {}
    for v in sorted(voices):
        pools.setdefault(v.engine, []).append(v)
    return pools


def tts_sources(by_split: dict[str, Sequence[S.Voice]]) -> list[str]:
    out = []
    for split, voices in by_split.items():
        cnt = Counter(v.engine for v in voices)
        out.append(f"{split} voices: " + ", ".join(f"{e} {n}" for e, n in sorted(cnt.items())))
    return out


def tts_notes() -> list[str]:
    if not S.festival_voices():
        return [
            "festival voices not installed (optional): "
            + S.apt_command("festival", *(p for p, _ in S.FESTIVAL_VOICES.values()))
        ]
    return []

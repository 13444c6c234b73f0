"""The unlabelled pretraining mix: TTS speech, music, recordings, mixtures of two and noise, in
the shares of :data:`PRETRAIN_SHARES`, rendered by worker threads a chunk at a time; it grows
(more minutes keep the clips already made) (``ssamba data pretrain-mix``)."""

from __future__ import annotations

import csv
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssamba.constants import SAMPLE_RATE
from ssamba.demo import sources as S
from ssamba.demo.build_common import (
    Clip,
    build_summary,
    clip_rng,
    delete_listed_wavs,
    missing_recordings_note,
    prepare_out,
    progress_bar,
    write_text_if_changed,
    write_wav,
)
from ssamba.demo.instruments import render_note_clip
from ssamba.demo.signals import (
    DRUM_KITS,
    MUSIC_STYLES,
    db,
    fade,
    fit,
    normalise,
    rms,
    shaped_noise,
    trim,
    weighted_choice,
)
from ssamba.demo.tts import engine_pools, pick_voice, tts_notes, tts_sources, tts_to_16k
from ssamba.errors import UsageError
from ssamba.fileio import csv_text

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
    if not prepare_out(out, spec, growable=("minutes",)):
        (out / "meta.csv").unlink(missing_ok=True)  # its sources were another build's
    n_clips = max(1, round(minutes * 60 / seconds))
    clips = _plan_pretrain_mix(seed, n_clips, seconds, kinds, w, src)
    delete_listed_wavs(out, keep=[c.path for c in clips])  # a shorter build than the last
    todo = [c for c in clips if not (out / c.path).exists()]
    # listed before rendering, so that an interrupted build's files are known to the next one
    _write_mix_meta(out / "meta.csv", clips, {})
    made = _render_mix(out, todo, src, seconds, workers, progress)
    _write_mix_meta(out / "meta.csv", clips, made)
    list_path = out / "manifest.txt"
    write_text_if_changed(list_path, "".join(c.path + "\n" for c in clips))
    return build_summary(
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
            "sources": tts_sources({"train": src.voices})
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
    notes += missing_recordings_note() + tts_notes()
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
        self.pools = engine_pools(self.src.voices)
        self.programs = pretrain_programs()
        # a package is drawn in proportion to the square root of its hours of audio
        hours = [
            sum(S.audio_info(f)[0] / S.audio_info(f)[1] for f in self.src.recorded[k])
            for k in sorted(self.src.recorded)
        ]
        self.package_weights = np.sqrt(np.array(hours, dtype=np.float64))

    def part(self, kind: str, rng: np.random.Generator) -> dict:
        if kind == "speech":
            voice = pick_voice(self.pools, rng)
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

    Clip ``i`` draws from ``clip_rng(seed, 8, i)`` only, so it is the same in any ``n_clips``."""
    planner = _MixPlanner(src, seconds)
    shares = dict(zip(kinds, w, strict=True))
    clips: list[Clip] = []
    for i in range(n_clips):
        rng = clip_rng(seed, 8, i)
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
    with progress_bar(len(todo), "pretrain-mix", progress) as bar:
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
        rng = clip_rng(*p["_seed"])
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
            x, _ = fit(fade(trim(tts_to_16k(wave, sr, p["speed"]))), self.n, rng)
            detail = f"rate {req.rate:g} pitch {req.pitch:g} speed {p['speed']:.3f}"
            return x, req.voice.key, detail
        if kind == "music":
            with self._lock:
                if self._notes is None:
                    self._notes = S.NoteRenderer(self.soundfonts)
                x, info = render_note_clip(
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
    write_text_if_changed(path, csv_text(("path", "kind", "source", "detail"), rows, line_end="\n"))

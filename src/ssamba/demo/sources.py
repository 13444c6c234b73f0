"""Real audio that works offline: TTS voices, sampled GM instruments and Debian sound packages.

Everything here is found on the local machine:

- speech: ``espeak-ng`` (7 English accents x ~100 voice variants), ``flite`` (kal, awb, rms, slt;
  awb/rms/slt are built from real recorded speakers) and, optionally, ``festival`` with the
  kal/ked diphone voices and the slt HTS voice;
- instruments: the General MIDI soundfonts ``FluidR3_GM.sf2`` and ``TimGM6mb.sf2`` rendered note by
  note with pip ``tinysoundfont`` (no system library);
- recordings: voice-actor packs, effects and music of Debian game/theme packages, decoded with
  ``soundfile``.

Voice and program hold-outs are fixed (they do not depend on any seed), so every builder agrees on
which voices/programs are unseen: the labelled tasks test on them, the pretraining mix never uses
them (:func:`split_of_voice`, :func:`instrument_program_splits`).

Missing required sources raise :class:`MissingSourceError` naming the Debian/pip package and the
command that installs it; optional ones are reported as missing and skipped.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ssamba.constants import SAMPLE_RATE
from ssamba.errors import MissingSourceError

#: Debian packages the demo builders need (keywords: espeak-ng, flite; instruments: both
#: soundfonts; speakers: hedgewars-data, which also provides recordings for the pretraining mix).
REQUIRED_APT_PACKAGES: tuple[str, ...] = (
    "espeak-ng",
    "flite",
    "fluid-soundfont-gm",
    "timgm6mb-soundfont",
    "hedgewars-data",
)
#: Debian packages used when present (more voices, more recorded sounds); skipped with a note.
OPTIONAL_APT_PACKAGES: tuple[str, ...] = (
    "festival",
    "festvox-kallpc16k",
    "festvox-kdlpc16k",
    "festvox-us-slt-hts",
    "wesnoth-1.16-data",
    "lincity-ng-data",
    "frozen-bubble-data",
    "extremetuxracer-data",
    "sound-theme-freedesktop",
    "alsa-utils",
)
#: Pip packages; install with ``pip install --no-deps tinysoundfont`` (its optional ``pyaudio``
#: dependency does not build without PortAudio headers and is not needed to render offline).
REQUIRED_PIP: tuple[str, ...] = ("tinysoundfont",)
PIP_INSTALL_COMMAND = "pip install --no-deps " + " ".join(REQUIRED_PIP)


def apt_command(*packages: str) -> str:
    return "apt-get install -y " + " ".join(packages)


# --------------------------------------------------------------------------------------------------
# Text-to-speech voices

ESPEAK_ACCENTS = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)
#: flite voices -> the real speaker behind them (kal16 is kal at 16 kHz: the same speaker).
FLITE_SPEAKERS = {"kal": "kal", "kal16": "kal", "awb": "awb", "rms": "rms", "slt": "slt"}
#: festival voice function -> (Debian package, speaker).
FESTIVAL_VOICES = {
    "kal_diphone": ("festvox-kallpc16k", "kal"),
    "ked_diphone": ("festvox-kdlpc16k", "ked"),
    "cmu_us_slt_arctic_hts": ("festvox-us-slt-hts", "slt"),
}
#: Fixed speaker hold-out for flite/festival (the same person through two engines stays in one
#: split: slt and kal are in flite and festival). slt, the only female one, is kept in training:
#: with it held out, no real-speaker-derived female voice was seen and those test clips scored near
#: chance with the baseline.
FIXED_SPEAKER_SPLITS = {
    "kal": "train",
    "awb": "train",
    "slt": "train",
    "ked": "valid",
    "rms": "test",
}
#: Fractions of espeak-ng voice variants held out for valid and test.
ESPEAK_HOLDOUT = {"test": 0.2, "valid": 0.15}


@dataclass(frozen=True, order=True)
class Voice:
    """One TTS voice. ``speaker`` is the identity that hold-outs keep on one side."""

    engine: str  # "espeak", "flite" or "festival"
    name: str  # espeak "accent+variant", flite voice, festival voice function
    speaker: str  # espeak variant, or the real speaker of flite/festival

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.name}"


@functools.cache
def espeak_data_dir() -> Path | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"Data at:\s*(\S+)", out)
    return Path(m.group(1)) if m else None


@functools.cache
def espeak_variants() -> tuple[str, ...]:
    data = espeak_data_dir()
    if data is None:
        return ()
    folder = data / "voices" / "!v"
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_file() and " " not in p.name))


@functools.cache
def flite_voices() -> tuple[str, ...]:
    exe = shutil.which("flite")
    if exe is None:
        return ()
    out = subprocess.run([exe, "-lv"], capture_output=True, text=True).stdout
    names = out.split(":", 1)[-1].split()
    return tuple(v for v in FLITE_SPEAKERS if v in names)


@functools.cache
def festival_voices() -> tuple[str, ...]:
    if shutil.which("festival") is None:
        return ()
    found = []
    for root in (Path("/usr/share/festival/voices"), Path("/usr/lib/festival/voices")):
        if root.is_dir():
            found += [p.name for p in root.glob("*/*") if p.is_dir()]
    return tuple(v for v in FESTIVAL_VOICES if v in found)


def _espeak_variant_splits() -> dict[str, str]:
    variants = sorted(espeak_variants(), key=lambda v: (zlib.crc32(v.encode()), v))
    n = len(variants)
    n_test = round(n * ESPEAK_HOLDOUT["test"])
    n_valid = round(n * ESPEAK_HOLDOUT["valid"])
    out = {}
    for i, v in enumerate(variants):
        out[v] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    return out


def split_of_voice(voice: Voice) -> str:
    """The fixed split (train/valid/test) a voice belongs to, independent of any seed.

    espeak-ng voice variants are held out as a whole (all accents of a variant go together), so a
    test voice has a voice quality never heard in training; flite/festival voices follow the real
    speaker (:data:`FIXED_SPEAKER_SPLITS`).
    """
    if voice.engine == "espeak":
        return _espeak_variant_splits()[voice.speaker]
    return FIXED_SPEAKER_SPLITS[voice.speaker]


def tts_voices(require: bool = True) -> list[Voice]:
    """All usable TTS voices; raises :class:`MissingSourceError` without espeak-ng/flite."""
    if require:
        if not espeak_variants():
            raise MissingSourceError("espeak-ng (with its voice variants)", "espeak-ng")
        if not flite_voices():
            raise MissingSourceError("flite", "flite")
    voices = [
        Voice("espeak", f"{accent}+{variant}", variant)
        for variant in espeak_variants()
        for accent in ESPEAK_ACCENTS
    ]
    voices += [Voice("flite", v, FLITE_SPEAKERS[v]) for v in flite_voices()]
    voices += [Voice("festival", v, FESTIVAL_VOICES[v][1]) for v in festival_voices()]
    return voices


def voices_by_split(require: bool = True) -> dict[str, list[Voice]]:
    out: dict[str, list[Voice]] = {"train": [], "valid": [], "test": []}
    for v in tts_voices(require):
        out[split_of_voice(v)].append(v)
    return out


@dataclass(frozen=True)
class TTSRequest:
    voice: Voice
    text: str
    rate: float = 1.0  # speaking-rate factor (1 = the voice's default)
    pitch: float = 1.0  # pitch factor (espeak-ng, flite)


def _read_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x.mean(axis=1), sr


def synthesize(req: TTSRequest) -> tuple[np.ndarray, int]:
    """One utterance -> (mono float32 wave, sample rate) with espeak-ng or flite."""
    v = req.voice
    if v.engine == "espeak":
        cmd = [
            "espeak-ng",
            "-v",
            v.name,
            "-s",
            str(round(165 * req.rate)),
            "-p",
            str(int(np.clip(round(50 * req.pitch), 0, 99))),
            "--stdout",
            req.text,
        ]
        out = subprocess.run(cmd, capture_output=True, check=True).stdout
        return _read_wav_bytes(out)
    if v.engine == "flite":
        with tempfile.TemporaryDirectory(prefix="ssamba-flite-") as tmp:
            path = os.path.join(tmp, "out.wav")
            cmd = ["flite", "-voice", v.name, "--setf", f"duration_stretch={1.0 / req.rate:.3f}"]
            if v.speaker != "slt":  # female voice: int_f0_target_mean defaults differ
                cmd += ["--setf", f"int_f0_target_mean={100 * req.pitch:.1f}"]
            else:
                cmd += ["--setf", f"int_f0_target_mean={170 * req.pitch:.1f}"]
            subprocess.run(cmd + ["-t", req.text, "-o", path], capture_output=True, check=True)
            return _read_wav_bytes(Path(path).read_bytes())
    if v.engine == "festival":
        return synthesize_festival_batch([req])[0]
    raise ValueError(f"unknown TTS engine {v.engine!r}")


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def synthesize_festival_batch(reqs: Sequence[TTSRequest]) -> list[tuple[np.ndarray, int]]:
    """Many festival utterances in one process per voice (festival's start-up is the cost)."""
    results: list[tuple[np.ndarray, int] | None] = [None] * len(reqs)
    by_voice: dict[str, list[int]] = {}
    for i, r in enumerate(reqs):
        by_voice.setdefault(r.voice.name, []).append(i)
    with tempfile.TemporaryDirectory(prefix="ssamba-festival-") as tmp:
        for name, idx in by_voice.items():
            lines = [f"(voice_{name})"]
            for i in idx:
                r = reqs[i]
                lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / r.rate:.3f})")
                out = os.path.join(tmp, f"{i}.wav")
                lines.append(
                    f"(utt.save.wave (utt.synth (Utterance Text {_scheme_string(r.text)})) "
                    f"{_scheme_string(out)} 'riff)"
                )
            script = os.path.join(tmp, f"{name}.scm")
            Path(script).write_text("\n".join(lines) + "\n")
            subprocess.run(["festival", "-b", script], capture_output=True, check=True)
            for i in idx:
                results[i] = _read_wav_bytes(Path(tmp, f"{i}.wav").read_bytes())
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Soundfonts (General MIDI)

SOUNDFONT_DIRS = (Path("/usr/share/sounds/sf2"),)
SOUNDFONTS = {"FluidR3_GM": "fluid-soundfont-gm", "TimGM6mb": "timgm6mb-soundfont"}

#: GM families (8 programs each) used by the instruments task, with a playable MIDI key range.
GM_FAMILIES: dict[str, tuple[int, tuple[int, int]]] = {
    "piano": (0, (33, 96)),
    "chromatic_percussion": (8, (55, 96)),
    "organ": (16, (36, 84)),
    "guitar": (24, (40, 79)),
    "bass": (32, (28, 55)),
    "strings": (40, (40, 84)),
    "ensemble": (48, (40, 79)),
    "brass": (56, (45, 77)),
    "reed": (64, (48, 81)),
    "pipe": (72, (60, 91)),
}
#: Key ranges of programs far from their family's range.
PROGRAM_RANGES: dict[int, tuple[int, int]] = {
    9: (67, 100),  # glockenspiel
    14: (60, 77),  # tubular bells
    40: (55, 93),  # violin
    42: (36, 72),  # cello
    43: (28, 60),  # contrabass
    47: (40, 57),  # timpani
    57: (40, 72),  # trombone
    58: (28, 58),  # tuba
    67: (36, 69),  # baritone sax
    70: (34, 67),  # bassoon
    72: (74, 103),  # piccolo
}
#: Programs held out per family (index within the family, 0..7): fixed, seed-independent.
#: Chosen so that neither split is made only of the family's "typical" instrument.
PROGRAM_HOLDOUT = {"test": (2, 6), "valid": (4,)}
#: The soundfont bank of the GM drum kits (no labelled task uses drums).
DRUM_BANK = 128


def find_soundfonts(require: bool = True) -> dict[str, Path]:
    found = {}
    for name, package in SOUNDFONTS.items():
        for d in SOUNDFONT_DIRS:
            p = d / f"{name}.sf2"
            if p.is_file():
                found[name] = p
                break
        else:
            if require:
                raise MissingSourceError(f"soundfont {name}.sf2", package)
    return found


def require_tinysoundfont():
    try:
        import tinysoundfont
    except ImportError:
        raise MissingSourceError(
            "Python package tinysoundfont", "tinysoundfont", pip=True
        ) from None
    return tinysoundfont


def instrument_program_splits() -> dict[str, dict[str, list[int]]]:
    """``{family: {"train": [...], "valid": [...], "test": [...]}}`` of GM programs (0..127)."""
    out = {}
    for family, (first, _) in GM_FAMILIES.items():
        splits: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
        for k in range(8):
            split = next((s for s, ks in PROGRAM_HOLDOUT.items() if k in ks), "train")
            splits[split].append(first + k)
        out[family] = splits
    return out


def program_key_range(program: int) -> tuple[int, int]:
    if program in PROGRAM_RANGES:
        return PROGRAM_RANGES[program]
    for first, rng in GM_FAMILIES.values():
        if first <= program < first + 8:
            return rng
    return (48, 84)


class NoteRenderer:
    """Renders notes and short phrases of GM programs at 16 kHz, one synth per soundfont."""

    def __init__(self, soundfonts: dict[str, Path], sample_rate: int = SAMPLE_RATE):
        tsf = require_tinysoundfont()
        self.sample_rate = sample_rate
        self._synths = {}
        for name, path in soundfonts.items():
            synth = tsf.Synth(samplerate=sample_rate)
            sfid = synth.sfload(str(path))
            self._synths[name] = (synth, sfid)

    @property
    def names(self) -> list[str]:
        return list(self._synths)

    def preset_name(self, soundfont: str, program: int) -> str | None:
        synth, sfid = self._synths[soundfont]
        return synth.sfpreset_name(sfid, 0, program)

    def render(
        self,
        soundfont: str,
        program: int,
        notes: Sequence[tuple[float, float, int, int]],
        seconds: float,
        drums: bool = False,
    ) -> np.ndarray:
        """Render ``notes`` = [(start_s, duration_s, key, velocity), ...] -> mono float32.

        ``drums``: ``program`` is a GM drum kit (bank 128) and the keys are percussion sounds."""
        synth, sfid = self._synths[soundfont]
        synth.sounds_off()
        synth.generate(self.sample_rate // 10)  # flush the previous tails
        synth.program_select(0, sfid, DRUM_BANK if drums else 0, program, drums)
        events = []
        for start, dur, key, vel in notes:
            events.append((round(start * self.sample_rate), 1, key, vel))
            events.append((round((start + dur) * self.sample_rate), 0, key, 0))
        events.sort()
        total = round(seconds * self.sample_rate)
        chunks, t = [], 0
        for when, on, key, vel in events:
            when = min(when, total)
            if when > t:
                chunks.append(self._generate(synth, when - t))
                t = when
            if on:
                synth.noteon(0, key, vel)
            else:
                synth.noteoff(0, key)
        if total > t:
            chunks.append(self._generate(synth, total - t))
        synth.sounds_off()
        return np.concatenate(chunks) if chunks else np.zeros(total, np.float32)

    @staticmethod
    def _generate(synth, n: int) -> np.ndarray:
        buf = np.frombuffer(synth.generate(n), dtype=np.float32).reshape(-1, 2)
        return buf.mean(axis=1).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Recorded sounds from Debian packages

HEDGEWARS_VOICES = Path("/usr/share/games/hedgewars/Data/Sounds/voices")
#: package -> folders searched recursively for audio (hedgewars voice packs excluded: they are the
#: speakers task).
RECORDED_PACKAGES: dict[str, tuple[str, ...]] = {
    "hedgewars-data": (
        "/usr/share/games/hedgewars/Data/Sounds",
        "/usr/share/games/hedgewars/Data/Music",
    ),
    "wesnoth-1.16-data": (
        "/usr/share/games/wesnoth/1.16/data/core/sounds",
        "/usr/share/games/wesnoth/1.16/sounds",
    ),
    "lincity-ng-data": ("/usr/share/games/lincity-ng/sounds", "/usr/share/games/lincity-ng/music"),
    "frozen-bubble-data": (
        "/usr/share/games/frozen-bubble/snd",
        "/usr/share/games/frozen-bubble/data",
    ),
    "extremetuxracer-data": ("/usr/share/games/etr/sounds", "/usr/share/games/etr/music"),
    "sound-theme-freedesktop": ("/usr/share/sounds/freedesktop",),
    "alsa-utils": ("/usr/share/sounds/alsa",),
}
#: Recordings that make good background noise for the keywords task (ambience, music).
AMBIENCE_HINTS = ("ambient", "music", "/etr/music", "lincity-ng/music")
_AUDIO_SUFFIXES = (".ogg", ".oga", ".wav", ".flac")


@functools.cache
def recorded_files() -> dict[str, tuple[Path, ...]]:
    """package -> audio files found (sorted); missing packages map to ()."""
    out = {}
    for package, roots in RECORDED_PACKAGES.items():
        files: set[Path] = set()
        for root in roots:
            r = Path(root)
            if r.is_dir():
                files.update(
                    p
                    for p in r.rglob("*")
                    if p.suffix.lower() in _AUDIO_SUFFIXES
                    and p.is_file()
                    and HEDGEWARS_VOICES not in p.parents
                )
        out[package] = tuple(sorted(files))
    return out


def hedgewars_voice_packs(require: bool = True) -> dict[str, tuple[Path, ...]]:
    """Hedgewars voice-actor pack -> its .ogg lines (sorted)."""
    if not HEDGEWARS_VOICES.is_dir():
        if require:
            raise MissingSourceError("hedgewars voice packs", "hedgewars-data")
        return {}
    packs = {}
    for d in sorted(HEDGEWARS_VOICES.iterdir()):
        files = tuple(sorted(p for p in d.glob("*.ogg") if p.is_file()))
        if d.is_dir() and files:
            packs[d.name] = files
    return packs


@functools.lru_cache(maxsize=4096)
def audio_info(path: Path) -> tuple[int, int]:
    """(frames, sample rate) of an audio file, without decoding it."""
    info = sf.info(str(path))
    return info.frames, info.samplerate


def read_segment(
    path: Path, start_s: float = 0.0, seconds: float | None = None, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Decode ``seconds`` from ``start_s`` of an audio file -> mono float32 at ``sample_rate``."""
    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        start = int(start_s * sr)
        if start:
            f.seek(min(start, max(f.frames - 1, 0)))
        n = -1 if seconds is None else int(np.ceil(seconds * sr))
        x = f.read(n, dtype="float32", always_2d=True).mean(axis=1)
    return resample(x, sr, sample_rate)


def resample(x: np.ndarray, orig_sr: float, new_sr: int = SAMPLE_RATE) -> np.ndarray:
    if orig_sr == new_sr or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(x, dtype=np.float32), orig_sr, new_sr).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Inventory


def inventory() -> dict[str, dict]:
    """What is installed: ``{source: {"found": bool, "package": ..., "detail": ...}}``."""
    out: dict[str, dict] = {}
    out["espeak-ng"] = {
        "found": bool(espeak_variants()),
        "package": "espeak-ng",
        "required": True,
        "detail": f"{len(espeak_variants())} variants x {len(ESPEAK_ACCENTS)} accents",
    }
    out["flite"] = {
        "found": bool(flite_voices()),
        "package": "flite",
        "required": True,
        "detail": ", ".join(flite_voices()),
    }
    fv = festival_voices()
    out["festival"] = {
        "found": bool(fv),
        "package": "festival " + " ".join(p for p, _ in FESTIVAL_VOICES.values()),
        "required": False,
        "detail": ", ".join(fv),
    }
    sfs = find_soundfonts(require=False)
    for name, package in SOUNDFONTS.items():
        out[name] = {
            "found": name in sfs,
            "package": package,
            "required": True,
            "detail": str(sfs.get(name, "")),
        }
    try:
        require_tinysoundfont()
        tsf = True
    except MissingSourceError:
        tsf = False
    out["tinysoundfont"] = {
        "found": tsf,
        "package": "pip: tinysoundfont (--no-deps)",
        "required": True,
        "detail": "",
    }
    packs = hedgewars_voice_packs(require=False)
    out["hedgewars voice packs"] = {
        "found": bool(packs),
        "package": "hedgewars-data",
        "required": True,
        "detail": f"{len(packs)} packs, {sum(map(len, packs.values()))} lines",
    }
    for package, files in recorded_files().items():
        out[f"recordings: {package}"] = {
            "found": bool(files),
            "package": package,
            "required": False,
            "detail": f"{len(files)} files",
        }
    return out


def format_inventory(inv: dict[str, dict] | None = None) -> str:
    inv = inventory() if inv is None else inv
    lines = []
    missing_apt = []
    for name, item in inv.items():
        mark = "ok     " if item["found"] else ("MISSING" if item["required"] else "absent ")
        lines.append(f"  {mark} {name:34s} {item['detail'] or item['package']}")
        if not item["found"] and not item["package"].startswith("pip"):
            missing_apt += item["package"].split()
    if missing_apt:
        lines.append(f"  install the missing ones with: {apt_command(*dict.fromkeys(missing_apt))}")
    return "\n".join(lines)

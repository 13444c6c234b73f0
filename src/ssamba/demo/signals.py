"""Signal helpers of the demo's data builders, and the synthetic sounds of the pretraining mix.

Everything random draws from a ``numpy.random.Generator`` the caller seeds per clip, so a clip is
the same whichever other clips are built, in whichever process, in whichever order.

- levels and placement: :func:`db`, :func:`rms`, :func:`normalise`, :func:`trim`, :func:`fade`,
  :func:`fit`;
- noise: :func:`coloured_noise` (1/f**a), :func:`shaped_noise` (a colour, a band-pass, bursts);
- music as note lists for :class:`ssamba.demo.sources.NoteRenderer`: :func:`music_notes` (a note,
  a melodic phrase, chords with random voicings, an arpeggio, or a drum pattern).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ssamba.constants import SAMPLE_RATE

Note = tuple[float, float, int, int]  # (start_s, duration_s, key, velocity)

#: Spectral exponent of each noise colour (power ~ 1/f**exponent); jittered by
#: :data:`NOISE_EXPONENT_JITTER` so the colours blend into each other.
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
NOISE_EXPONENT_JITTER = 0.3
#: Chance that a noise clip is band-pass filtered, and that it comes in bursts.
NOISE_FILTER_PROB = 0.5
NOISE_BURST_PROB = 0.4

#: Chord qualities (semitones above the root) the mix's chords and arpeggios draw from.
CHORD_QUALITIES: dict[str, tuple[int, ...]] = {
    "major": (0, 4, 7),
    "minor": (0, 3, 7),
    "diminished": (0, 3, 6),
    "augmented": (0, 4, 8),
    "sus2": (0, 2, 7),
    "sus4": (0, 5, 7),
    "major7": (0, 4, 7, 11),
    "minor7": (0, 3, 7, 10),
    "dominant7": (0, 4, 7, 10),
    "add9": (0, 4, 7, 14),
}
#: Scales of the melodic phrases.
SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11, 12),
    "minor": (0, 2, 3, 5, 7, 8, 10, 12),
    "pentatonic": (0, 2, 4, 7, 9, 12),
    "blues": (0, 3, 5, 6, 7, 10, 12),
}
#: Shares of the music styles in the pretraining mix.
MUSIC_STYLES = {"note": 0.15, "phrase": 0.3, "chords": 0.3, "arpeggio": 0.15, "drums": 0.1}
#: GM drum kits (bank 128) present in FluidR3_GM and TimGM6mb.
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)
#: GM percussion keys by role in a drum pattern.
DRUM_KEYS = {
    "kick": (35, 36),
    "snare": (38, 40, 39),
    "hat": (42, 44, 46),
    "tom": (41, 43, 45, 47, 48, 50),
    "cymbal": (49, 51, 52, 53, 55, 57, 59),
    "hand": (54, 56, 60, 61, 62, 63, 64, 69, 70, 75, 76, 77),
}


# --------------------------------------------------------------------------------------------------
# Levels and placement


def db(x: float) -> float:
    return 10 ** (x / 20.0)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def normalise(x: np.ndarray, level_db: float) -> np.ndarray:
    """Scale to an RMS of ``level_db`` dBFS, then down to a peak of 0.99 if it clips."""
    x = x * (db(level_db) / (rms(x) + 1e-12))
    peak = np.abs(x).max()
    return x / peak * 0.99 if peak > 0.99 else x


def trim(x: np.ndarray, threshold_db: float = -35.0, frame: int = 160) -> np.ndarray:
    """Cut leading/trailing frames quieter than ``threshold_db`` below the loudest frame."""
    n = len(x) // frame
    if n == 0:
        return x
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)) + 1e-10
    loud = np.nonzero(20 * np.log10(e / e.max()) > threshold_db)[0]
    if len(loud) == 0:
        return x[:0]
    return x[loud[0] * frame : (loud[-1] + 1) * frame]


def fade(x: np.ndarray, n: int = 160) -> np.ndarray:
    x = x.copy()
    n = min(n, len(x) // 2)
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def fit(x: np.ndarray, length: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Place ``x`` at a random offset in ``length`` zeros, or take a random window of it."""
    out = np.zeros(length, np.float32)
    if len(x) >= length:
        start = int(rng.integers(0, len(x) - length + 1))
        out[:] = x[start : start + length]
        return out, -start
    offset = int(rng.integers(0, length - len(x) + 1))
    out[offset : offset + len(x)] = x
    return out, offset


# --------------------------------------------------------------------------------------------------
# Noise


def _power_law(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """The rfft of white noise shaped to a 1/f**exponent power spectrum (no DC)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec *= f ** (-exponent / 2.0)
    spec[0] = 0.0
    return spec


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown)."""
    x = np.fft.irfft(_power_law(n, exponent, rng), n)
    return (x / (rms(x) + 1e-12)).astype(np.float32)


def band_pass_gain(freqs: np.ndarray, low: float, high: float, order: int) -> np.ndarray:
    """Magnitude response of a Butterworth-like band-pass (``order`` poles each side)."""
    f = np.maximum(freqs, 1e-3)
    return 1.0 / np.sqrt((1.0 + (low / f) ** (2 * order)) * (1.0 + (f / high) ** (2 * order)))


def burst_envelope(n: int, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A gain curve of 1 to 6 bursts (5 ms attack, exponential decay) over a quiet floor."""
    t = np.arange(n) / sample_rate
    env = np.zeros(n)
    for _ in range(int(rng.integers(1, 7))):
        start = float(rng.uniform(0, n / sample_rate))
        decay = float(rng.uniform(0.02, 0.4))
        rel = t - start
        shape = np.where(rel < 0, 0.0, np.minimum(rel / 0.005, 1.0) * np.exp(-rel / decay))
        env = np.maximum(env, shape * float(rng.uniform(0.5, 1.0)))
    return np.maximum(env, db(float(rng.uniform(-40, -15)))).astype(np.float32)


def shaped_noise(n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Unit-RMS synthetic noise and its description: a colour (white/pink/brown, exponent
    jittered), band-pass filtered with :data:`NOISE_FILTER_PROB`, in bursts with
    :data:`NOISE_BURST_PROB`."""
    colour = list(NOISE_COLOURS)[int(rng.integers(len(NOISE_COLOURS)))]
    exponent = NOISE_COLOURS[colour] + float(rng.uniform(-1, 1)) * NOISE_EXPONENT_JITTER
    spec = _power_law(n, max(exponent, 0.0), rng)
    detail = [colour]
    if rng.random() < NOISE_FILTER_PROB:
        low = float(np.exp(rng.uniform(np.log(40), np.log(3000))))
        high = min(low * float(np.exp(rng.uniform(np.log(1.5), np.log(30)))), 7900.0)
        order = int(rng.integers(1, 5))
        freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        spec = spec * band_pass_gain(freqs, low, high, order)
        detail.append(f"band {low:.0f}-{high:.0f} Hz")
    x = np.fft.irfft(spec, n)
    if rng.random() < NOISE_BURST_PROB:
        x = x * burst_envelope(n, rng)
        detail.append("bursts")
    return (x / (rms(x) + 1e-12)).astype(np.float32), " ".join(detail)


# --------------------------------------------------------------------------------------------------
# Music as note lists


def chord_voicing(rng: np.random.Generator, lo: int, hi: int) -> list[int]:
    """A random chord in [lo, hi]: quality, root, inversion, some tones spread up an octave,
    sometimes the root doubled below."""
    quality = CHORD_QUALITIES[list(CHORD_QUALITIES)[int(rng.integers(len(CHORD_QUALITIES)))]]
    root = int(rng.integers(lo, max(lo, hi - 12) + 1))
    keys = [root + i for i in quality]
    inversion = int(rng.integers(len(keys)))
    keys = sorted(keys[inversion:] + [k + 12 for k in keys[:inversion]])
    keys = [keys[0]] + [k + 12 if rng.random() < 0.25 else k for k in keys[1:]]
    if rng.random() < 0.3:
        keys.append(keys[0] - 12)
    inside = sorted({k for k in keys if lo <= k <= hi})
    return inside or [int(np.clip(root, lo, hi))]


def _note(rng: np.random.Generator, lo: int, hi: int, seconds: float) -> list[Note]:
    start = float(rng.uniform(0, 0.15))
    dur = float(rng.uniform(0.3, min(1.6, seconds - start)))
    return [(start, dur, int(rng.integers(lo, hi + 1)), int(rng.integers(60, 128)))]


def _phrase(rng: np.random.Generator, lo: int, hi: int, seconds: float) -> list[Note]:
    scale = np.array(SCALES[list(SCALES)[int(rng.integers(len(SCALES)))]])
    root = int(rng.integers(lo, hi + 1))
    beat = float(rng.uniform(0.1, 0.3))
    notes, t = [], float(rng.uniform(0, 0.15))
    while t < seconds - 0.1:
        dur = beat * float(rng.choice([0.5, 1, 1, 1.5, 2]))
        key = int(np.clip(root + rng.choice(scale) - 5, lo, hi))
        notes.append((t, dur * float(rng.uniform(0.6, 1.0)), key, int(rng.integers(50, 128))))
        t += dur
    return notes


def _chords(rng: np.random.Generator, lo: int, hi: int, seconds: float) -> list[Note]:
    count = int(rng.integers(1, 5))
    span = seconds / count
    strum = float(rng.uniform(0, 0.04)) if rng.random() < 0.5 else 0.0
    notes = []
    for c in range(count):
        start = c * span + float(rng.uniform(0, 0.05))
        dur = span * float(rng.uniform(0.5, 1.0))
        vel = int(rng.integers(50, 120))
        for j, key in enumerate(chord_voicing(rng, lo, hi)):
            notes.append(
                (start + j * strum, dur, key, int(np.clip(vel + rng.integers(-10, 11), 1, 127)))
            )
    return notes


def _arpeggio(rng: np.random.Generator, lo: int, hi: int, seconds: float) -> list[Note]:
    keys = chord_voicing(rng, lo, hi)
    order = ("up", "down", "random")[int(rng.integers(3))]
    step = float(rng.uniform(0.07, 0.2))
    hold = float(rng.uniform(0.5, 2.0))
    notes, t, j = [], float(rng.uniform(0, 0.1)), 0
    while t < seconds - 0.05:
        if order == "up":
            key = keys[j % len(keys)]
        elif order == "down":
            key = keys[-1 - j % len(keys)]
        else:
            key = keys[int(rng.integers(len(keys)))]
        notes.append((t, step * hold, key, int(rng.integers(50, 120))))
        t, j = t + step, j + 1
    return notes


def _drums(rng: np.random.Generator, seconds: float) -> list[Note]:
    """A pattern on a grid: kick, snare and hat lines, random fills and cymbals."""
    step = 60.0 / float(rng.uniform(70, 170)) / 4  # sixteenth notes
    roles = {r: int(rng.choice(keys)) for r, keys in DRUM_KEYS.items()}
    hits = {
        "kick": float(rng.uniform(0.15, 0.4)),
        "snare": float(rng.uniform(0.1, 0.3)),
        "hat": float(rng.uniform(0.3, 0.9)),
        "tom": float(rng.uniform(0.0, 0.15)),
        "cymbal": float(rng.uniform(0.0, 0.08)),
        "hand": float(rng.uniform(0.0, 0.3)),
    }
    notes = []
    for k in range(int(seconds / step)):
        for role, p in hits.items():
            if rng.random() < p or (role == "kick" and k % 8 == 0):
                notes.append((k * step, step, roles[role], int(rng.integers(40, 128))))
    return notes


def music_notes(style: str, rng: np.random.Generator, lo: int, hi: int, seconds: float):
    """Notes of one ``style`` of :data:`MUSIC_STYLES` within the key range [lo, hi]."""
    if style == "note":
        return _note(rng, lo, hi, seconds)
    if style == "phrase":
        return _phrase(rng, lo, hi, seconds)
    if style == "chords":
        return _chords(rng, lo, hi, seconds)
    if style == "arpeggio":
        return _arpeggio(rng, lo, hi, seconds)
    if style == "drums":
        return _drums(rng, seconds)
    raise ValueError(f"unknown music style {style!r}")


def weighted_choice(options: Sequence[str], weights: dict[str, float], rng) -> str:
    w = np.array([weights[o] for o in options], dtype=np.float64)
    return options[int(rng.choice(len(options), p=w / w.sum()))]

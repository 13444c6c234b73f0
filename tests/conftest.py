"""Shared test fixtures: synthetic audio files written into ``tmp_path``.

Helpers (plain functions, also exposed as fixtures of the same name):

- ``make_wav(path, seconds=1.0, freq=440.0, sr=16000, channels=1, ...)``: a sine tone file
  (any format soundfile writes, chosen by the suffix: .wav, .flac, .ogg).
- ``write_corrupt(path)``: random bytes that no decoder accepts.
- ``write_empty_wav(path)``: a valid WAV header with zero samples.
- ``write_nonfinite_wav(path)``: a float WAV containing NaN (or inf) samples.

Fixtures building folders:

- ``tone_folder``: ``root/<class>/<k>.wav`` with three classes (``high``, ``low``, ``mid``),
  ``tone_folder.per_class`` files each, 16 kHz mono, 0.5 s, a distinct frequency per class.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TONE_CLASSES = {"low": 220.0, "mid": 880.0, "high": 3520.0}


def one_error_line(err: str, *needles: str) -> str:
    """The single ``error: ...`` line of ``err`` (log lines aside); it names every needle."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def make_wav(
    path: str | os.PathLike,
    seconds: float = 1.0,
    freq: float = 440.0,
    sr: int = 16000,
    channels: int = 1,
    *,
    amplitude: float = 0.5,
    noise: float = 0.0,
    seed: int = 0,
    subtype: str | None = None,
) -> Path:
    """Write a sine tone (plus optional white noise) and return its path.

    Channel ``c`` has phase offset ``c * pi / 4`` so channels differ. ``subtype`` is passed to
    soundfile (e.g. ``"PCM_16"`` (WAV default), ``"FLOAT"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sr))
    t = np.arange(n, dtype=np.float64) / sr
    rng = np.random.default_rng(seed)
    cols = [
        amplitude * np.sin(2 * np.pi * freq * t + c * np.pi / 4) + noise * rng.standard_normal(n)
        for c in range(channels)
    ]
    data = np.stack(cols, axis=1).astype(np.float32)
    sf.write(str(path), data if channels > 1 else data[:, 0], sr, subtype=subtype)
    return path


def write_corrupt(path: str | os.PathLike, size: int = 4096, seed: int = 0) -> Path:
    """Random bytes under an audio name: neither soundfile nor ffmpeg can decode them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_empty_wav(path: str | os.PathLike, sr: int = 16000) -> Path:
    """A well-formed WAV file with zero samples."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(0, dtype=np.float32), sr, subtype="PCM_16")
    return path


def write_nonfinite_wav(
    path: str | os.PathLike, seconds: float = 0.5, sr: int = 16000, value: float = float("nan")
) -> Path:
    """A float32 WAV tone with a few samples set to ``value`` (NaN by default, or +-inf)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * sr))
    data = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / sr)).astype(np.float32)
    data[n // 3 : n // 3 + 5] = value
    sf.write(str(path), data, sr, subtype="FLOAT")
    return path


@pytest.fixture(name="make_wav")
def make_wav_fixture():
    return make_wav


@pytest.fixture(name="write_corrupt")
def write_corrupt_fixture():
    return write_corrupt


@pytest.fixture(name="write_empty_wav")
def write_empty_wav_fixture():
    return write_empty_wav


@pytest.fixture(name="write_nonfinite_wav")
def write_nonfinite_wav_fixture():
    return write_nonfinite_wav


class ToneFolder(type(Path())):  # a Path with a couple of attributes
    classes: list[str]
    per_class: int
    seconds: float


@pytest.fixture
def tone_folder(tmp_path) -> Path:
    """A folder-per-class tree of short tones: ``tones/{high,low,mid}/{0,1,2}.wav``.

    Returns the root path; ``tone_folder.classes`` (sorted names), ``.per_class`` and ``.seconds``
    describe it. Files within a class differ slightly in frequency and noise.
    """
    root = ToneFolder(tmp_path / "tones")
    per_class, seconds = 3, 0.5
    for name, freq in TONE_CLASSES.items():
        for k in range(per_class):
            make_wav(root / name / f"{k}.wav", seconds, freq * (1 + 0.05 * k), noise=0.01, seed=k)
    root.classes = sorted(TONE_CLASSES)
    root.per_class = per_class
    root.seconds = seconds
    return root

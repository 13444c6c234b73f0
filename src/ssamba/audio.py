"""Audio front end: decoding, resampling, Kaldi filterbanks, normalisation and SpecAugment.

This is the SSAST/SSAMBA front end (docs/frontend.md), computed exactly as the reference
dataloader does it::

    wave = load_audio(path)                     # mono float32 in [-1, 1) at 16 kHz
    fb = fbank(wave, target_length=1024, normalize="audioset")

which equals, step by step:

1. ``wave - wave.mean()`` (per clip);
2. ``torchaudio.compliance.kaldi.fbank(wave, htk_compat=True, sample_frequency=16000,
   use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)``:
   25 ms frames every 10 ms with ``snip_edges`` (only whole frames), per-frame DC removal,
   pre-emphasis 0.97, symmetric Hann window, zero padding to a 512-point FFT, power spectrum,
   128 triangular filters on the HTK mel scale between 20 Hz and Nyquist, natural log with a
   floor at float32 epsilon;
3. zero padding at the end or cutting to ``target_length`` frames;
4. ``(fb - mean) / (2 * std)``.

Every use of a trained model on audio it is handed (``ssamba.embed``, the HEAR API, the s3prl
upstream, ``FeatureExtractor``) goes through the inference front end at the end of this module:
:func:`waveforms` (checked 16 kHz waveforms), :func:`fbank_frames` (raw fbank per clip) and
:func:`input_batch` (padded, then normalised); training goes through ``data.AudioDataset``
(:func:`fbank`, :func:`spec_augment`, :func:`normalize_fbank`). No other module computes an
fbank or its normalisation.

Our filterbank is written in plain torch (no torchaudio): every frame of every clip goes
through one ``rfft`` and one matrix product, so it runs batched on CPU or CUDA. The window and
the mel matrix are built once per (sample rate, device, dtype) and cached. Its output matches
the reference and ``kaldi-native-fbank`` to about 1e-5 (see docs/frontend.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ssamba.constants import FRAME_LENGTH_MS, FRAME_SHIFT_MS, NUM_MEL_BINS, SAMPLE_RATE
from ssamba.errors import AudioError, UsageError, WaveformTypeError

__all__ = [
    "FRAME_SAMPLES",
    "HOP_SAMPLES",
    "NORM_STATS",
    "NUM_MEL_BINS",
    "SAMPLE_RATE",
    "AudioError",
    "as_waveform",
    "fbank",
    "fbank_frames",
    "input_batch",
    "load_audio",
    "normalize_fbank",
    "normalize_stats",
    "num_frames",
    "pad_or_cut",
    "resample",
    "spec_augment",
    "waveforms",
]


# (mean, std) of the raw log-mel filterbank over each data set, as published with SSAST.
NORM_STATS: dict[str, tuple[float, float]] = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "speechcommands": (-6.845978, 5.5654526),
}

# Kaldi frame and filterbank settings of the reference (kaldi.fbank defaults unless noted).
PREEMPHASIS = 0.97
LOW_FREQ = 20.0  # Hz; the high edge is Nyquist (Kaldi high_freq=0)
# Kaldi floors the filterbank energies at numeric_limits<float>::epsilon() before the log, in
# every dtype (torchaudio uses the float32 value for float64 input too).
LOG_FLOOR = float(torch.finfo(torch.float32).eps)

# soxr quality: "HQ" is libsoxr's default high-quality setting (20-bit precision, stopband
# attenuation well above 100 dB), already far beyond what a 16-bit source or a log-mel front end
# can resolve; "VHQ" costs more time for no measurable change in the filterbank.
RESAMPLE_QUALITY = "HQ"

# Frames per fbank call on the CPU when a batch is given (see fbank()).
CPU_CHUNK_FRAMES = 1024


# --------------------------------------------------------------------------------------------
# Decoding and resampling
# --------------------------------------------------------------------------------------------


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode an audio file to a mono float32 tensor ``(samples,)`` at ``sample_rate``.

    Anything libsndfile reads (wav, flac, ogg, mp3, ...) is decoded with soundfile; other
    containers (m4a, opus, webm, ...) go through ``ffmpeg`` when it is on PATH. Integer PCM is
    scaled to [-1, 1) as torchaudio.load does (int16 / 32768). Channels are averaged, then the
    signal is resampled with soxr. The mean is NOT removed (``fbank`` does that).

    A clip shorter than one 25 ms frame is returned as is (``fbank`` pads it when given a
    ``target_length``). Raises :class:`AudioError` for a missing, undecodable or empty file, a
    WAV whose data is shorter than its header declares (a damaged file, not a short clip), and
    for NaN or infinite samples.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if not path.is_file():
        raise AudioError(path, "not a regular file")

    declared = None
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as sf_error:  # libsndfile raises several types; all mean "cannot decode"
        data, file_rate = _decode_with_ffmpeg(path, sf_error)
        # a header libsndfile reads over data it cannot (a FLAC cut short: "lost sync"), which
        # ffmpeg decodes up to the cut: compared with what the header declares
        declared = declared_frames(path)

    if data.shape[0] == 0:
        raise AudioError(path, "the file contains no audio samples")
    _check_complete(path, data.shape[0], file_rate, declared)
    wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise AudioError(path, f"{bad} of {wave.size} samples are NaN or infinite")
    if file_rate != sample_rate:
        wave = _soxr_resample(wave, int(file_rate), int(sample_rate))
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


def _check_complete(path: Path, frames: int, rate: int, declared: int | None = None) -> None:
    """A WAV whose data ends before its header says is a damaged file, not a short clip:
    libsndfile silently trims its frame count to what is there (only WAV headers are read here,
    which costs one small read, unless ``declared`` gives the header's count already; other
    formats are compared by ``ssamba check-data``)."""
    if declared is not None:
        _refuse_short(path, frames, rate, declared)
        return
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            declared = (
                wav_declared_frames(f)
                if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE"
                else None
            )
    except OSError:
        return
    _refuse_short(path, frames, rate, declared)


def _refuse_short(path: Path, frames: int, rate: int, declared: int | None) -> None:
    if declared is not None and frames < declared - max(1, declared // 1000):
        raise AudioError(
            path,
            f"truncated: the header declares {declared / rate:.3f} s, the data holds "
            f"{frames / rate:.3f} s",
        )


def declared_frames(path: str | os.PathLike) -> int | None:
    """The frame count the file's header declares, when it can be read: for WAV the size of
    its data chunk (libsndfile silently trims a short one to what is there), else what
    soundfile reports from the header (FLAC's STREAMINFO, ...)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                return wav_declared_frames(f)
        info = sf.info(str(path))
    except Exception:  # not readable by soundfile: decoded by ffmpeg, no header to compare
        return None
    return int(info.frames) if info.frames > 0 else None


def wav_declared_frames(f) -> int | None:
    """Frames of a RIFF WAV's data chunk as its header declares them (``f`` after 'WAVE')."""
    block_align = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            return None
        cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            fmt = f.read(size)
            if len(fmt) >= 14:
                block_align = struct.unpack("<H", fmt[12:14])[0]
            if size % 2:
                f.read(1)
        elif cid == b"data":
            if not block_align or size in (0, 0xFFFFFFFF):  # streamed WAVs leave the size open
                return None
            return size // block_align
        else:
            f.seek(size + size % 2, os.SEEK_CUR)


def _decode_with_ffmpeg(path: Path, sf_error: Exception) -> tuple[np.ndarray, int]:
    """Decode ``path`` with ffmpeg into float32 samples ``(frames, channels)`` and its rate.

    ffmpeg writes a float WAV into a temporary folder and soundfile reads it back: this keeps the
    channel count and the native rate, so downmixing and resampling stay the same as for files
    soundfile decodes directly (ffmpeg's own ``-ac 1``/``-ar`` would mix and resample
    differently).
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError(
            path,
            f"cannot decode ({_one_line(sf_error)}); install ffmpeg to read formats that "
            "libsndfile does not support",
        ) from None
    with tempfile.TemporaryDirectory(prefix="ssamba_decode_") as tmp:
        out = os.path.join(tmp, "decoded.wav")
        cmd = [ffmpeg, "-nostdin", "-v", "error", "-y", "-i", str(path), "-vn", "-map", "0:a:0"]
        cmd += ["-c:a", "pcm_f32le", "-rf64", "auto", "-f", "wav", out]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise AudioError(path, f"cannot run ffmpeg: {exc}") from None
        if proc.returncode != 0 or not os.path.exists(out):
            msg = _one_line(proc.stderr) or f"exit status {proc.returncode}"
            raise AudioError(path, f"cannot decode (soundfile and ffmpeg both failed: {msg})")
        try:
            data, rate = sf.read(out, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(path, f"cannot decode ffmpeg output: {_one_line(exc)}") from None
    return data, int(rate)


def _one_line(message: object) -> str:
    """The last non-empty line of an error message, for compact AudioError texts."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _soxr_resample(wave: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    import soxr  # imported lazily: only needed when rates differ

    return soxr.resample(wave, orig_sr, new_sr, quality=RESAMPLE_QUALITY).astype(
        np.float32, copy=False
    )


def resample(wave: torch.Tensor | np.ndarray, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample a waveform with soxr (band-limited, anti-aliased); returns float32 on the CPU.

    ``wave`` is ``(samples,)`` or ``(channels, samples)`` (torch or numpy). Equal rates return a
    float32 copy.
    """
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if isinstance(wave, torch.Tensor):
        array = wave.detach().to("cpu", torch.float32).numpy()
    else:
        array = np.asarray(wave, dtype=np.float32)
    if array.ndim not in (1, 2):
        raise ValueError(f"expected (samples,) or (channels, samples), got shape {array.shape}")
    if orig_sr == new_sr:
        return torch.from_numpy(array.copy())
    # soxr wants (frames, channels); our tensors are (channels, samples).
    out = _soxr_resample(array if array.ndim == 1 else array.T, int(orig_sr), int(new_sr))
    return torch.from_numpy(np.ascontiguousarray(out if array.ndim == 1 else out.T))


# --------------------------------------------------------------------------------------------
# Kaldi filterbank
# --------------------------------------------------------------------------------------------


def _frame_sizes(sample_rate: int) -> tuple[int, int, int]:
    """(window length, hop, FFT size) in samples; Kaldi truncates ms * rate to an integer."""
    length = int(sample_rate * FRAME_LENGTH_MS / 1000.0)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000.0)
    n_fft = 1 << (length - 1).bit_length()  # round_to_power_of_two
    return length, shift, n_fft


# The fbank grid at 16 kHz in samples: a frame every HOP_SAMPLES, FRAME_SAMPLES long.
FRAME_SAMPLES, HOP_SAMPLES, _ = _frame_sizes(SAMPLE_RATE)  # 400, 160


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Number of frames Kaldi yields with snip_edges: ``1 + (n - 400) // 160`` at 16 kHz."""
    length, shift, _ = _frame_sizes(sample_rate)
    return 0 if num_samples < length else 1 + (num_samples - length) // shift


def _mel_scale(freq: np.ndarray | float) -> np.ndarray | float:
    """HTK mel scale, as Kaldi defines it (natural log, 1127)."""
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def _mel_matrix_f64(sample_rate: int, num_bins: int) -> np.ndarray:
    """Triangular mel filters as a ``(n_fft // 2 + 1, num_bins)`` float64 matrix.

    Kaldi's MelBanks: ``num_bins`` triangles equally spaced on the mel scale between LOW_FREQ
    and Nyquist, each spanning two neighbours' centres, evaluated at the FFT bin frequencies
    ``k * rate / n_fft`` for k < n_fft / 2. The Nyquist bin gets no weight (Kaldi never looks at
    it), hence the final zero row. Built in float64 once, then cast per dtype.
    """
    _, _, n_fft = _frame_sizes(sample_rate)
    nyquist = 0.5 * sample_rate
    if not 0.0 <= LOW_FREQ < nyquist:
        raise ValueError(f"sample rate {sample_rate} is too low for a {LOW_FREQ} Hz low edge")
    mel_low, mel_high = _mel_scale(LOW_FREQ), _mel_scale(nyquist)
    delta = (mel_high - mel_low) / (num_bins + 1)  # +1: the outer triangles reach the edges
    edges = mel_low + delta * np.arange(num_bins + 2, dtype=np.float64)
    left, centre, right = edges[:-2], edges[1:-1], edges[2:]

    bin_mel = _mel_scale(np.arange(n_fft // 2, dtype=np.float64) * (sample_rate / n_fft))[:, None]
    rising = (bin_mel - left) / (centre - left)
    falling = (right - bin_mel) / (right - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([weights, np.zeros((1, num_bins))], axis=0)


@lru_cache(maxsize=32)
def _fbank_constants(
    sample_rate: int, num_bins: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Hann window (length,), mel matrix (n_fft//2+1, num_bins)) on ``device`` in ``dtype``."""
    length, _, _ = _frame_sizes(sample_rate)
    # Kaldi's "hanning" is the symmetric Hann window 0.5 - 0.5 cos(2 pi n / (N - 1)).
    n = np.arange(length, dtype=np.float64)
    window = 0.5 - 0.5 * np.cos(2.0 * math.pi * n / (length - 1))
    window_t = torch.tensor(window, dtype=dtype, device=device)
    mel_t = torch.tensor(_mel_matrix_f64(sample_rate, num_bins), dtype=dtype, device=device)
    return window_t, mel_t


def _as_wave_tensor(wave: Any, dtype: torch.dtype | None) -> torch.Tensor:
    """Torch view of ``wave`` in the compute dtype: float64 stays float64, else float32."""
    tensor = torch.from_numpy(wave) if isinstance(wave, np.ndarray) else torch.as_tensor(wave)
    if not (tensor.is_floating_point()):
        raise WaveformTypeError(
            f"expected a float waveform in [-1, 1), got dtype {tensor.dtype}; "
            "scale integer PCM first (e.g. int16 / 32768)"
        )
    if dtype is None:
        dtype = torch.float64 if tensor.dtype == torch.float64 else torch.float32
    return tensor.to(dtype)


def fbank(
    wave: torch.Tensor | np.ndarray,
    target_length: int | None = None,
    normalize: Any = None,
    sample_rate: int = SAMPLE_RATE,
    *,
    num_mel_bins: int = NUM_MEL_BINS,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Log-mel filterbank of one clip ``(samples,)`` -> ``(T, 128)`` or a batch -> ``(B, T, 128)``.

    Per-clip mean removal followed by the reference Kaldi fbank (see the module docstring), on the
    device of ``wave``. ``T = 1 + (samples - 400) // 160`` at 16 kHz, then padded with zeros at the
    end or cut to ``target_length`` if given. ``normalize`` (None, a preset name from NORM_STATS,
    a ``(mean, std)`` pair, a dict or a JSON stats file, see :func:`normalize_stats`) applies
    ``(fb - mean) / (2 * std)`` after the padding, as the reference does.

    Computes in float32, or float64 for float64 input (``dtype`` overrides). A clip shorter than
    one frame gives zero frames: an error without ``target_length``, all padding with it.
    """
    stats = normalize_stats(normalize)  # resolve first: a bad name fails before any work
    wave = _as_wave_tensor(wave, dtype)
    if wave.dim() not in (1, 2):
        raise ValueError(f"expected a waveform (samples,) or (batch, samples), got {wave.shape}")
    length, shift, n_fft = _frame_sizes(sample_rate)
    n_samples = wave.shape[-1]
    frames_out = num_frames(n_samples, sample_rate)
    if frames_out == 0 and target_length is None:
        raise ValueError(
            f"waveform of {n_samples} samples is shorter than one {FRAME_LENGTH_MS:g} ms frame "
            f"({length} samples at {sample_rate} Hz); pass target_length to pad it"
        )

    batch = wave.reshape(-1, n_samples)
    if frames_out == 0:
        feats = batch.new_zeros(batch.shape[0], 0, num_mel_bins)
    elif batch.device.type == "cpu" and batch.shape[0] > 1:
        # On the CPU a whole batch of 10 s clips (~20 MB of frames and spectra per clip) falls out
        # of cache and runs about 2x slower per clip than one clip at a time; chunks of at most
        # CPU_CHUNK_FRAMES frames keep the intermediates cache-sized. Accelerators take it all.
        per_chunk = max(1, CPU_CHUNK_FRAMES // frames_out)
        feats = torch.cat(
            [
                _kaldi_fbank(chunk, sample_rate, num_mel_bins, length, shift)
                for chunk in batch.split(per_chunk)
            ]
        )
    else:
        feats = _kaldi_fbank(batch, sample_rate, num_mel_bins, length, shift)
    if target_length is not None:
        feats = pad_or_cut(feats, target_length)
    if stats is not None:
        feats = normalize_fbank(feats, *stats)
    return feats if wave.dim() == 2 else feats[0]


def _kaldi_fbank(
    batch: torch.Tensor, sample_rate: int, num_bins: int, length: int, shift: int
) -> torch.Tensor:
    """Kaldi log-mel fbank of ``(B, N)`` waveforms -> ``(B, T, num_bins)``, all frames at once."""
    window, mel = _fbank_constants(sample_rate, num_bins, batch.device, batch.dtype)
    _, _, n_fft = _frame_sizes(sample_rate)

    # Clip mean removal (the reference dataloader). Per-frame DC removal below makes it a no-op
    # mathematically, but it is kept so the float rounding follows the reference.
    batch = batch - batch.mean(dim=-1, keepdim=True)
    frames = batch.unfold(-1, length, shift)  # (B, T, length) strided view, no copy
    frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset

    # Pre-emphasis inside each frame; Kaldi's first sample uses itself as its predecessor.
    emphasised = torch.empty_like(frames)
    torch.sub(frames[..., 1:], frames[..., :-1], alpha=PREEMPHASIS, out=emphasised[..., 1:])
    torch.mul(frames[..., :1], 1.0 - PREEMPHASIS, out=emphasised[..., :1])
    emphasised *= window

    spectrum = torch.fft.rfft(emphasised, n=n_fft)  # zero-pads each frame to n_fft
    # |X|^2 as re^2 + im^2: no sqrt, and ~5x faster than summing a view_as_real pair axis.
    power = spectrum.real.square() + spectrum.imag.square()
    energies = torch.matmul(power, mel)  # (B, T, num_bins)
    return energies.clamp_min_(LOG_FLOOR).log_()


# --------------------------------------------------------------------------------------------
# Padding, normalisation, SpecAugment
# --------------------------------------------------------------------------------------------


def pad_or_cut(fb: torch.Tensor, target_length: int) -> torch.Tensor:
    """Zero-pad at the end or keep the first ``target_length`` frames (time axis -2)."""
    if target_length < 0:
        raise ValueError(f"target_length must be >= 0, got {target_length}")
    n = fb.shape[-2]
    if n > target_length:
        return fb[..., :target_length, :]
    if n < target_length:
        return torch.nn.functional.pad(fb, (0, 0, 0, target_length - n))
    return fb


def normalize_stats(normalize: Any) -> tuple[float, float] | None:
    """Resolve a normalisation setting to ``(mean, std)``, or None for no normalisation.

    Accepts None (or ``"none"``), a preset name (``"audioset"``, ``"esc50"``,
    ``"speechcommands"``), a ``(mean, std)`` pair or a ``"MEAN,STD"`` string, a mapping with
    ``"mean"`` and ``"std"``, or the path of a JSON file holding such a mapping (as written by
    ``ssamba stats``).
    """
    if normalize is None:
        return None
    if isinstance(normalize, str) and normalize.strip().lower() in NORM_STATS:
        return NORM_STATS[normalize.strip().lower()]
    if isinstance(normalize, str) and normalize.lower() == "none":
        return None
    if isinstance(normalize, str) and normalize.count(",") == 1 and not Path(normalize).exists():
        mean, std = normalize.split(",")  # "MEAN,STD" as given on a command line
        try:
            pair = float(mean), float(std)
        except ValueError:
            raise UsageError(f"normalize {normalize!r}: expected MEAN,STD numbers") from None
        return _check_stats(*pair, f"normalize {normalize!r}")
    if isinstance(normalize, (str, os.PathLike)):
        path = Path(normalize)
        if path.suffix.lower() == ".json" or path.is_file():
            return _stats_from_mapping(_read_stats_json(path), f"stats file {path}")
        raise UsageError(
            f"normalize: unknown normalisation {str(normalize)!r}: expected one of the presets "
            f"{', '.join(sorted(NORM_STATS))}, a (mean, std) pair, a dict with 'mean' and 'std', "
            "or the path of a JSON stats file"
        )
    if isinstance(normalize, dict):
        return _stats_from_mapping(normalize, "normalisation dict")
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        return _check_stats(normalize[0], normalize[1], "normalisation pair")
    raise UsageError(
        f"normalize: cannot use {normalize!r} as normalisation: expected None, a preset name "
        f"({', '.join(sorted(NORM_STATS))}), a (mean, std) pair, a dict or a JSON path"
    )


def _read_stats_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"normalize: stats file not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"normalize: cannot read stats from {path}: {exc}") from None


def _stats_from_mapping(stats: Any, what: str) -> tuple[float, float]:
    if not isinstance(stats, dict) or "mean" not in stats or "std" not in stats:
        raise UsageError(f"{what} must have 'mean' and 'std' keys")
    return _check_stats(stats["mean"], stats["std"], what)


def _check_stats(mean: Any, std: Any, what: str) -> tuple[float, float]:
    try:
        mean_f, std_f = float(mean), float(std)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: mean and std must be numbers, got {mean!r}, {std!r}") from None
    if not (math.isfinite(mean_f) and math.isfinite(std_f) and std_f > 0):
        raise UsageError(
            f"{what}: need a finite mean and a positive finite std, got {mean_f:g}, {std_f:g}"
        )
    return mean_f, std_f


def normalize_fbank(fb: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """The SSAST normalisation ``(fb - mean) / (2 * std)`` (new tensor)."""
    return (fb - mean) / (2.0 * std)


def spec_augment(
    fb: torch.Tensor, freqm: int, timem: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """SpecAugment as the SSAST recipe applies it: one frequency mask, then one time mask.

    ``fb`` is ``(T, 128)`` (leading batch dims get the same masks). Each mask follows
    torchaudio's ``FrequencyMasking``/``TimeMasking`` (``mask_along_axis``): width
    ``w = int(u1 * param)`` in ``[0, param)``, start ``int(u2 * (size - u1 * param))``, filled
    with 0. Apply it to the raw fbank, before normalisation. ``param`` 0 disables a mask.
    Returns a new tensor; ``generator`` makes the draws reproducible.
    """
    out = fb.clone()
    out = _mask_along(out, freqm, dim=-1, generator=generator)
    return _mask_along(out, timem, dim=-2, generator=generator)


def _mask_along(
    fb: torch.Tensor, mask_param: int, dim: int, generator: torch.Generator | None
) -> torch.Tensor:
    if mask_param < 0:
        raise ValueError(f"mask width parameter must be >= 0, got {mask_param}")
    if mask_param == 0:
        return fb
    size = fb.shape[dim]
    # Same draws and rounding as torchaudio.functional.mask_along_axis (single float32 draws).
    value = torch.rand(1, generator=generator) * mask_param
    min_value = torch.rand(1, generator=generator) * (size - value)
    start = int(min_value.long())
    end = start + int(value.long())
    if end > start:
        fb.narrow(dim, start, min(end, size) - start).zero_()
    return fb


# --------------------------------------------------------------------------------------------
# The inference front end: callers' waveforms -> checked 16 kHz waveforms -> a model's input
# (ssamba.embed, FeatureExtractor, the s3prl upstream and the HEAR API all go this way; the
# training path is data.AudioDataset: fbank, SpecAugment, normalize_fbank)
# --------------------------------------------------------------------------------------------


def as_waveform(x: Any, sample_rate: int | None, what: str = "waveform") -> torch.Tensor:
    """A caller's waveform (tensor, array or list of samples) as a 1-D float tensor at 16 kHz.

    Resampled with soxr (to float32 on the CPU) when ``sample_rate`` differs; a 16 kHz tensor
    stays on its device (detached, float32). One error line names ``what`` is wrong: not 1-D,
    not float (a :class:`WaveformTypeError`), empty, NaN or infinite samples, no sample rate.
    """
    if isinstance(x, torch.Tensor):
        tensor = x
    else:  # a read-only array (a decoder's buffer) is copied: torch wants writable memory
        array = np.ascontiguousarray(x)
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if tensor.dim() != 1:
        raise UsageError(
            f"{what}: expected a 1-D float waveform, got shape {tuple(tensor.shape)} {tensor.dtype}"
        )
    if not tensor.is_floating_point():
        raise WaveformTypeError(
            f"{what}: expected a float waveform in [-1, 1), got {tensor.dtype}; "
            "scale integer PCM first (e.g. int16 / 32768)"
        )
    if tensor.numel() == 0:
        raise UsageError(f"{what}: empty waveform")
    if not bool(torch.isfinite(tensor).all()):
        raise UsageError(f"{what}: waveform contains NaN or infinite samples")
    if sample_rate is None:
        raise UsageError(f"{what}: a waveform needs its sample_rate (e.g. sample_rate=16000)")
    if int(sample_rate) != SAMPLE_RATE:
        return resample(tensor, int(sample_rate), SAMPLE_RATE)
    return tensor.detach().to(torch.float32)


def waveforms(audio: Any, sample_rate: int | None) -> tuple[list[torch.Tensor], list[str] | None]:
    """Every clip of ``audio`` as a checked 16 kHz waveform (:func:`as_waveform`), and the
    clips' names when any was a file.

    ``audio``: a path (decoded with :func:`load_audio`), a waveform (1-D tensor or array), a
    batch ``(n, samples)``, or a list of waveforms and paths, mixed; ``sample_rate`` is the rate
    of the waveforms given as samples.
    """
    if _is_path(audio):
        return [load_audio(audio)], [str(audio)]
    if isinstance(audio, (torch.Tensor, np.ndarray)):
        if audio.ndim == 2:  # (n_sounds, samples)
            rows = [as_waveform(row, sample_rate, f"waveform {i}") for i, row in enumerate(audio)]
            return rows, None
        return [as_waveform(audio, sample_rate)], None
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise UsageError("no audio given (empty list)")
        waves, names = [], []
        for i, item in enumerate(audio):
            if _is_path(item):
                waves.append(load_audio(item))
                names.append(str(item))
            else:
                waves.append(as_waveform(item, sample_rate, f"waveform {i}"))
                names.append(f"<waveform {i}>")
        return waves, (names if any(map(_is_path, audio)) else None)
    raise WaveformTypeError(
        f"cannot use {type(audio).__name__} as audio: expected a waveform (tensor/array), a "
        "list of waveforms, a path or a list of paths"
    )


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def fbank_frames(wave: torch.Tensor, num_mel_bins: int = NUM_MEL_BINS) -> torch.Tensor:
    """The raw (unnormalised) float32 fbank ``(T, num_mel_bins)`` of a 16 kHz waveform, on its
    device; a clip shorter than one frame has no frames (padding makes its whole input)."""
    if num_frames(wave.shape[-1]) == 0:
        return torch.zeros(0, num_mel_bins, dtype=torch.float32, device=wave.device)
    return fbank(wave, num_mel_bins=num_mel_bins).float()


def input_batch(
    frames: list[torch.Tensor],
    length: int,
    stats: tuple[float, float] | None,
    padding_value: float = 0.0,
) -> torch.Tensor:
    """Clips' raw fbank frames as one model input ``(B, length, mel)``: each padded at its end
    with ``padding_value`` or cut, then normalised with ``stats`` (mean, std) when given. The
    padding comes before the normalisation, as the reference data loader pads."""
    padded = []
    for fb in frames:
        if padding_value == 0.0 or fb.shape[0] >= length:
            padded.append(pad_or_cut(fb, length))
        else:
            fill = fb.new_full((length - fb.shape[0], fb.shape[1]), padding_value)
            padded.append(torch.cat([fb, fill]))
    batch = torch.stack(padded)
    return batch if stats is None else normalize_fbank(batch, *stats)

"""Clip and frame embeddings of any audio with a trained (or pretrained) SSAMBA/SSAST encoder.

Python::

    model = ssamba.load_model("ssamba_tiny_400.pth")
    emb = ssamba.embed(model, "speech.flac")
    emb.clip                  # (N, E) one vector per clip: the mean of the patch tokens
    emb.frames[0]             # (T, E) one vector per patch column (160 ms apart at stride 16)
    emb.timestamps[0]         # (T,) seconds: the centre of each patch column

    emb = ssamba.embed(model, waves, sample_rate=44100, layers=[4, -1], window_seconds=10.24)

Many files, decoded a batch at a time (:func:`embed_files`); as a resumable output folder,
:mod:`ssamba.embedding_store` and the command line::

    ssamba embed data/ more.wav list.csv -c model/ -o emb/ [--frame-embeddings] [--format npz]

How audio becomes embeddings (docs/frontend.md, docs/model.md):

- The waveform (resampled to 16 kHz with soxr when needed) goes through the reference Kaldi
  fbank; every clip gets its own fbank (no padding to a batch length), normalised with the
  model's ``config.norm_mean`` / ``config.norm_std``.
- A clip shorter than the model's ``input_tdim`` is zero padded to it (before normalisation,
  exactly as the reference dataloader pads). A longer clip is kept whole: a state space model is
  linear in length and the positional embedding is resized to the grid. Only the last partial
  column is completed with padding, so no audio at the end is dropped.
- ``frames``: the patch tokens averaged over the frequency axis, one vector per patch column.
  Column ``t`` covers fbank frames ``t * tstride ... t * tstride + 15``, i.e. samples
  ``[160 a, 160 a + 2800)`` with ``a = t * tstride``; its timestamp is the centre of that span,
  ``(10 a + 87.5) ms``. Only columns whose centre lies within the real audio are returned (at
  least one), so padding never shows up as frames.
- ``clip``: the mean of the returned columns (= the mean of the patch tokens over the real audio;
  padding columns are left out, so a clip's embedding does not depend on how much it was padded).
- ``layers``: ``-1`` (default) is the encoder's final normalised output. Other indices select the
  intermediate streams of ``EncoderOutput.layers`` (one per Mamba layer pair for SSAMBA, one per
  block for SSAST; these are the raw residual streams, not normalised), Python-style, so with L
  streams ``L - 1`` and ``-1`` both mean the final output. Several layers are concatenated along
  the feature axis, in the order given.
- ``window_seconds``: cut long recordings into windows (each processed like a clip), every
  ``hop_seconds`` (default: the window). The hop is rounded to whole patch columns (and at most
  the columns one window holds), so windows share the column grid of the whole recording; each
  column's frame embedding comes from the window in which it is most central. ``clip`` is then the
  mean over windows. Windows of ``input_tdim`` frames keep the positional embedding exactly as
  trained, which can matter for recordings much longer than the pretraining clips.

Results are deterministic and do not depend on the batch: only clips (or windows) of the same
padded length are stacked, and the model runs in eval mode under ``torch.inference_mode``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ssamba.audio import (
    FRAME_SAMPLES,
    HOP_SAMPLES,
    fbank_frames,
    input_batch,
    load_audio,
    num_frames,
    waveforms,
)
from ssamba.constants import FRAMES_PER_SECOND, PATCH, POOLINGS, SAMPLE_RATE
from ssamba.data import check_bad_file_policy
from ssamba.errors import AudioError, UsageError
from ssamba.models.patches import PATCH_CENTRE_MS, column_times, pool_columns

__all__ = [
    "POOLINGS",
    "Embeddings",
    "FileBatch",
    "embed",
    "embed_files",
    "layer_columns",
    "model_device",
    "model_fingerprint",
    "num_layers",
    "resolve_layers",
]

# A patch column starting at fbank frame a is centred CENTRE_SAMPLES after sample
# HOP_SAMPLES * a (see column_times).
CENTRE_SAMPLES = round(SAMPLE_RATE * PATCH_CENTRE_MS / 1000)  # 1400


@dataclass
class Embeddings:
    """Embeddings of N clips. All tensors are float32 on the CPU (timestamps float64)."""

    clip: torch.Tensor  # (N, D): D = embed_dim * len(layers)
    frames: list[torch.Tensor]  # N tensors (T_i, D): one vector per patch column
    timestamps: list[torch.Tensor]  # N tensors (T_i,): column centres in seconds
    layers: tuple[int, ...] = (-1,)
    names: list[str] | None = None  # the source paths, when files were given
    durations: list[float] = field(default_factory=list)  # seconds of audio per clip

    def __len__(self) -> int:
        return self.clip.shape[0]

    @property
    def dim(self) -> int:
        return self.clip.shape[1]


# --------------------------------------------------------------------------------------------
# Helpers shared with hear.py and probe.py
# --------------------------------------------------------------------------------------------


def num_layers(model) -> int:
    """Number of selectable layer streams (``EncoderOutput.layers``) of ``model``."""
    cfg = model.config
    if cfg.arch == "ssamba" and cfg.bidirectional:
        return cfg.depth // 2
    return cfg.depth


def resolve_layers(model, layers: Sequence[int] | int | None) -> tuple[int, ...]:
    """Validate layer indices; returns them normalised to ``0 .. L-1`` (L-1: final output)."""
    if layers is None:
        layers = (-1,)
    elif isinstance(layers, int):
        layers = (layers,)
    layers = tuple(layers)
    if not layers:
        raise UsageError("layers must name at least one layer")
    n = num_layers(model)
    out = []
    for idx in layers:
        if not isinstance(idx, (int, np.integer)) or isinstance(idx, bool):
            raise TypeError(f"layer indices must be integers, got {idx!r}")
        if not -n <= idx < n:
            raise UsageError(
                f"layer {idx} out of range: this model has {n} layer streams "
                f"(indices {-n} .. {n - 1}; -1 is the final normalised output)"
            )
        out.append(int(idx) % n)
    return tuple(out)


def layer_columns(layers: Sequence[int], keep: Sequence[int], dim: int, pooling: str) -> np.ndarray:
    """Indices of the clip-vector columns that belong to the layers ``keep``, in a clip vector
    of width ``dim`` embedded with ``layers`` (concatenated in that order) and ``pooling``.

    The layout :func:`embed` writes: one equal-width block per layer, in ``layers`` order; with
    ``"+std"`` pooling the means of all layers come first and their standard deviations after.
    So a probe of a subset of the layers can be cut out of one embedding of all of them.
    """
    layers, keep = list(layers), list(keep)
    missing = [k for k in keep if k not in layers]
    if missing:
        raise UsageError(f"layers {missing} are not among the embedded layers {layers}")
    halves = 2 if pooling.endswith("+std") else 1
    if dim % (halves * len(layers)):
        raise UsageError(
            f"a clip vector of width {dim} cannot hold {len(layers)} layers ({pooling})"
        )
    width = dim // (halves * len(layers))
    blocks = [h * dim // halves + layers.index(k) * width for h in range(halves) for k in keep]
    return np.concatenate([np.arange(start, start + width) for start in blocks])


def _columns(n_frames: int, n_samples: int, cfg) -> int:
    """Columns returned for ``n_frames`` fbank frames of ``n_samples`` audio samples: those
    whose centre lies within the audio (at least 1), at most the padded input's grid."""
    # centre of column t in samples: HOP_SAMPLES * t * tstride + CENTRE_SAMPLES (column_times)
    if n_samples < CENTRE_SAMPLES:
        k = 1
    else:
        k = (n_samples - CENTRE_SAMPLES) // (HOP_SAMPLES * cfg.tstride) + 1
    t_dim = (_padded_length(n_frames, cfg.input_tdim, cfg.tstride) - PATCH) // cfg.tstride + 1
    return max(1, min(k, t_dim))


def _padded_length(n_frames: int, input_tdim: int, tstride: int) -> int:
    cover = PATCH + math.ceil(max(n_frames - PATCH, 0) / tstride) * tstride
    return max(input_tdim, cover)


def model_fingerprint(model) -> str:
    """SHA-256 of a model's config and weights: identifies the embeddings it produces."""
    h = hashlib.sha256()
    h.update(model.config.to_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# The embedding computation
# --------------------------------------------------------------------------------------------


@dataclass
class _Segment:
    clip: int
    raw: torch.Tensor  # (n, NUM_MEL_BINS) unnormalised fbank frames of this clip/window
    n_samples: int  # audio samples the segment covers (for the real-column rule)
    first_column: int  # global column index of its column 0
    columns: torch.Tensor | None = None  # (k, D) real columns, filled by _run_segments


@dataclass
class _Windows:
    """How long audio is cut: windows of ``frames`` fbank frames, every ``hop_columns``."""

    frames: int
    hop_columns: int


def embed(
    model,
    audio,
    sample_rate: int | None = None,
    *,
    layers: Sequence[int] | int | None = None,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    pooling: str = "mean",
) -> Embeddings:
    """Clip and frame embeddings of ``audio`` (see the module docstring for the details).

    Args:
        model: an :class:`~ssamba.models.AudioModel` (its fine-tuning head, if any, is unused).
        audio: a waveform (1-D tensor/array), a batch ``(n, samples)``, a list of waveforms, a
            path, or a list of paths (decoded with :func:`ssamba.load_audio`); may be mixed.
        sample_rate: the rate of the waveforms given as arrays (resampled to 16 kHz if needed).
        layers: layer indices to concatenate (default ``[-1]``: the final normalised output).
        window_seconds, hop_seconds: process long audio in windows (default: whole).
        batch_size: clips (or windows) of equal padded length run together, up to this many.
        device: where to compute (default: the model's device); the model is moved there.
        pooling: ``"mean"`` (default): frame = mean over the frequency rows of a patch column,
            clip = mean of the frames. ``"bands"``: the frequency rows are kept apart (frames and
            clip have ``f_dim`` times the width), which keeps the spectral layout that a global
            mean loses. ``"+std"`` appends the standard deviation over time to the clip vector.
    Returns:
        :class:`Embeddings` with CPU tensors.

    All given audio is decoded before the model runs: for many files use :func:`embed_files`
    (or ``ssamba embed``), which decodes ``batch_size`` files at a time.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if pooling not in POOLINGS:
        raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    layers_n = resolve_layers(model, layers)
    cfg = model.config
    device = _place(model, device)
    waves, names = waveforms(audio, sample_rate)
    windows = _windows(cfg, window_seconds, hop_seconds)
    with torch.inference_mode():
        per_clip, total_cols = [], []
        for i, wave in enumerate(waves):
            segs, total = _cut(i, wave, device, cfg, windows)
            per_clip.append(segs)
            total_cols.append(total)
        segments = [seg for segs in per_clip for seg in segs]
        was_training = model.training
        model.eval()
        try:
            bands = pooling.startswith("bands")
            _run_segments(model, segments, layers_n, batch_size, device, bands)
        finally:
            model.train(was_training)
    return _assemble(per_clip, total_cols, cfg.tstride, pooling, layers, names, waves)


def _place(model, device: str | torch.device | None) -> torch.device:
    """The device to compute on (default: the model's); the model is moved there."""
    if device is None:
        return model_device(model)
    device = torch.device(device)
    if model_device(model) != device:
        model.to(device)
    return device


def _windows(cfg, window_seconds: float | None, hop_seconds: float | None) -> _Windows | None:
    """Check the window options; None means every clip is processed whole."""
    if window_seconds is None:
        if hop_seconds is not None:
            raise UsageError("hop_seconds needs window_seconds")
        return None
    if window_seconds <= 0:
        raise UsageError(f"window_seconds must be > 0, got {window_seconds}")
    frames = max(PATCH, int(round(window_seconds * FRAMES_PER_SECOND)))
    cols_per_window = _columns(frames, HOP_SAMPLES * (frames - 1) + FRAME_SAMPLES, cfg)
    hop = window_seconds if hop_seconds is None else hop_seconds
    if hop <= 0:
        raise UsageError(f"hop_seconds must be > 0, got {hop_seconds}")
    if hop > window_seconds:
        raise UsageError(
            f"hop_seconds ({hop}) > window_seconds ({window_seconds}) would skip audio"
        )
    # whole columns, so every window shares the column grid of the whole recording
    hop_columns = max(1, min(cols_per_window, int(round(hop * FRAMES_PER_SECOND / cfg.tstride))))
    return _Windows(frames, hop_columns)


def _cut(
    i: int, wave: torch.Tensor, device, cfg, windows: _Windows | None
) -> tuple[list[_Segment], int]:
    """Clip ``i`` as segments (one, or its windows) and the number of columns it returns."""
    raw = fbank_frames(wave.to(device))
    n_samples = int(wave.shape[-1])
    n = raw.shape[0]
    total = _columns(n, n_samples, cfg)
    if windows is None or n <= windows.frames:
        return [_Segment(i, raw, n_samples, 0)], total
    segs = []
    start_col = 0
    while True:
        a = start_col * cfg.tstride  # first frame of the window
        seg_raw = raw[a : a + windows.frames]
        # samples this window covers: up to the end of its last frame, or the clip end
        end = min(n_samples, HOP_SAMPLES * (a + seg_raw.shape[0] - 1) + FRAME_SAMPLES)
        segs.append(_Segment(i, seg_raw, end - HOP_SAMPLES * a, start_col))
        if a + windows.frames >= n:
            return segs, total
        start_col += windows.hop_columns


def _run_segments(
    model,
    segments: list[_Segment],
    layers: tuple[int, ...],
    batch_size: int,
    device,
    bands: bool = False,
) -> None:
    """Fill every segment's ``columns``: segments of the same padded length run together."""
    cfg = model.config
    dtype = next(model.parameters()).dtype
    groups: dict[int, list[_Segment]] = {}
    for seg in segments:
        length = _padded_length(seg.raw.shape[0], cfg.input_tdim, cfg.tstride)
        groups.setdefault(length, []).append(seg)
    for length, group in sorted(groups.items()):
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            stats = (cfg.norm_mean, cfg.norm_std)
            fb = input_batch([s.raw.to(device) for s in chunk], length, stats).to(dtype)
            cols = _column_features(model, fb, layers, bands)
            for b, seg in enumerate(chunk):
                k = _columns(seg.raw.shape[0], seg.n_samples, cfg)
                seg.columns = cols[b, :k].to("cpu")


def _column_features(model, fb: torch.Tensor, layers: tuple[int, ...], bands: bool) -> torch.Tensor:
    """(B, t_dim, D): the chosen layers' patch tokens per column, concatenated."""
    n_streams = num_layers(model)
    enc = model.encode(fb, return_layers=any(i != n_streams - 1 for i in layers))
    parts = []
    for idx in layers:
        if idx == n_streams - 1:
            tokens = enc.patch_tokens
        else:
            tokens = enc.layers[idx][:, model.config.num_class_tokens :]
        parts.append(pool_columns(tokens, enc.grid, bands))
    return torch.cat(parts, dim=-1)


def _assemble(
    per_clip: list[list[_Segment]],
    total_cols: list[int],
    tstride: int,
    pooling: str,
    layers,
    names: list[str] | None,
    waves: list[torch.Tensor],
) -> Embeddings:
    """Clip vectors, frames and timestamps from the computed segments."""
    clips, frames, stamps = [], [], []
    for i, segs in enumerate(per_clip):
        if len(segs) == 1:
            cols = segs[0].columns
            clip = cols.mean(dim=0)
        else:
            cols = _stitch(segs, total_cols[i])
            clip = torch.stack([s.columns.mean(dim=0) for s in segs]).mean(dim=0)
        if pooling.endswith("+std"):
            clip = torch.cat([clip, cols.std(dim=0, unbiased=False)])
        clips.append(clip)
        frames.append(cols.clone())  # a normal tensor (not an inference-mode one)
        stamps.append(column_times(cols.shape[0], tstride))
    return Embeddings(
        clip=torch.stack(clips).float(),
        frames=frames,
        timestamps=stamps,
        layers=(-1,) if layers is None else tuple(np.atleast_1d(layers).tolist()),
        names=names,
        durations=[w.shape[-1] / SAMPLE_RATE for w in waves],
    )


def _stitch(segs: list[_Segment], total: int) -> torch.Tensor:
    """Column embeddings of a whole clip from overlapping windows: each column from the window
    in which it is most central (ties: the earlier window)."""
    dim = segs[0].columns.shape[1]
    out = torch.empty(total, dim)
    best = torch.full((total,), -1, dtype=torch.long)
    for seg in segs:
        k = seg.columns.shape[0]
        t = torch.arange(k)
        g = seg.first_column + t
        score = torch.minimum(t, k - 1 - t)
        keep = g < total
        t, g, score = t[keep], g[keep], score[keep]
        better = score > best[g]  # columns of one window are distinct: no write conflicts
        best[g[better]] = score[better]
        out[g[better]] = seg.columns[t[better]]
    if bool((best < 0).any()):  # cannot happen with hop <= window; kept as a guard
        missing = int((best < 0).nonzero()[0])
        raise RuntimeError(f"window stitching left column {missing} uncovered")
    return out


# --------------------------------------------------------------------------------------------
# Many files, a batch at a time
# --------------------------------------------------------------------------------------------


@dataclass
class FileBatch:
    """One batch of :func:`embed_files`: ``indices`` of the files embedded (positions in the
    list given) with their ``embeddings`` (row ``j`` is file ``indices[j]``; None when no file of
    the batch could be read), and the ``bad`` files left out (index -> the decoding error)."""

    indices: list[int]
    embeddings: Embeddings | None
    bad: dict[int, AudioError]
    size: int  # files in this batch, embedded or bad (for progress bars)


def embed_files(
    model,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 8,
    on_bad_file: str = "error",
    **options,
) -> Iterator[FileBatch]:
    """Embed audio files ``batch_size`` at a time (only one batch is decoded at once).

    ``on_bad_file="error"`` raises the :class:`~ssamba.errors.AudioError` of the first file that
    cannot be decoded; ``"skip"`` leaves it out and reports it in :attr:`FileBatch.bad`.
    ``options`` go to :func:`embed` (``layers``, ``window_seconds``, ``device``, ``pooling``...).
    """
    check_bad_file_policy(on_bad_file)
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    return _file_batches(model, list(paths), batch_size, on_bad_file, options)


def _file_batches(model, paths: list, batch_size: int, on_bad_file: str, options: dict):
    # a generator of its own, so that embed_files checks its arguments when called
    for start in range(0, len(paths), batch_size):
        chunk = range(start, min(start + batch_size, len(paths)))
        waves, ok, bad = [], [], {}
        for i in chunk:
            try:
                wave = load_audio(paths[i])
                if num_frames(wave.shape[-1]) == 0:
                    raise AudioError(
                        paths[i],
                        f"too short: {wave.shape[-1]} samples make no 25 ms fbank frame",
                    )
                waves.append(wave)
                ok.append(i)
            except AudioError as err:
                if on_bad_file == "error":
                    raise
                bad[i] = err
        emb = None
        if waves:
            emb = embed(model, waves, sample_rate=SAMPLE_RATE, batch_size=batch_size, **options)
        yield FileBatch(ok, emb, bad, len(chunk))

"""Clip and frame embeddings of any audio with a trained (or pretrained) SSAMBA/SSAST encoder.

Python::

    model = ssamba.load_model("ssamba_tiny_400.pth")
    emb = model.embed("speech.flac")                        # or ssamba.embeddings.embed(model, ...)
    emb.clip                  # (N, E) one vector per clip: the mean of the patch tokens
    emb.frames[0]             # (T, E) one vector per patch column (160 ms apart at stride 16)
    emb.timestamps[0]         # (T,) seconds: the centre of each patch column

    emb = model.embed(waves, sample_rate=44100, layers=[4, -1], window_seconds=10.24)

Command line::

    ssamba embed data/ more.wav list.csv --checkpoint model/ --out emb/ [--frames] [--format npz]

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

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssamba.audio import SAMPLE_RATE, fbank, load_audio, num_frames, resample
from ssamba.models.config import PATCH

__all__ = [
    "Embeddings",
    "add_embed_parser",
    "column_times",
    "embed",
    "model_fingerprint",
    "num_layers",
    "run_embed",
]

FRAME_SHIFT_MS = 10.0
PATCH_CENTRE_MS = 87.5  # centre of a 16-frame patch: (15 * 10 ms + 25 ms) / 2


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
        raise ValueError("layers must name at least one layer")
    n = num_layers(model)
    out = []
    for idx in layers:
        if not isinstance(idx, (int, np.integer)) or isinstance(idx, bool):
            raise TypeError(f"layer indices must be integers, got {idx!r}")
        if not -n <= idx < n:
            raise ValueError(
                f"layer {idx} out of range: this model has {n} layer streams "
                f"(indices {-n} .. {n - 1}; -1 is the final normalised output)"
            )
        out.append(int(idx) % n)
    return tuple(out)


def column_times(num_columns: int, tstride: int, offset_frames: int = 0) -> torch.Tensor:
    """Centres (seconds, float64) of patch columns ``0 .. num_columns-1``.

    Each value is computed from its index (no accumulation): ``(10 * a + 87.5) ms`` with
    ``a = offset_frames + t * tstride`` the column's first fbank frame.
    """
    first = offset_frames + torch.arange(num_columns, dtype=torch.float64) * tstride
    return (first * FRAME_SHIFT_MS + PATCH_CENTRE_MS) / 1000.0


def _columns(n_frames: int, n_samples: int, cfg) -> int:
    """Columns returned for ``n_frames`` fbank frames of ``n_samples`` audio samples: those
    whose centre lies within the audio (at least 1), at most the padded input's grid."""
    # centre of column t in samples: 160 * t * tstride + 1400 (see column_times)
    k = 1 if n_samples < 1400 else (n_samples - 1400) // (160 * cfg.tstride) + 1
    t_dim = (_padded_length(n_frames, cfg.input_tdim, cfg.tstride) - PATCH) // cfg.tstride + 1
    return max(1, min(k, t_dim))


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
# Inputs
# --------------------------------------------------------------------------------------------


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _one_wave(x: Any, sample_rate: int | None, what: str) -> torch.Tensor:
    """A 1-D float waveform at 16 kHz (CPU unless already at 16 kHz on another device)."""
    tensor = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if tensor.dim() != 1:
        raise ValueError(f"{what}: expected a 1-D waveform, got shape {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        raise TypeError(
            f"{what}: expected a float waveform in [-1, 1), got {tensor.dtype}; "
            "scale integer PCM first (e.g. int16 / 32768)"
        )
    if tensor.numel() == 0:
        raise ValueError(f"{what}: empty waveform")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what}: waveform contains NaN or infinite samples")
    if sample_rate is None:
        raise ValueError(
            f"{what}: a waveform needs its sample_rate (e.g. embed(model, wave, sample_rate=16000))"
        )
    if int(sample_rate) != SAMPLE_RATE:
        return resample(tensor, int(sample_rate), SAMPLE_RATE)
    return tensor.detach().to(torch.float32)


def _as_waves(audio: Any, sample_rate: int | None) -> tuple[list[torch.Tensor], list[str] | None]:
    if _is_path(audio):
        return [load_audio(audio)], [str(audio)]
    if isinstance(audio, (torch.Tensor, np.ndarray)):
        if audio.ndim == 2:  # (n_sounds, samples)
            return [
                _one_wave(row, sample_rate, f"waveform {i}") for i, row in enumerate(audio)
            ], None
        return [_one_wave(audio, sample_rate, "waveform")], None
    if isinstance(audio, (list, tuple)):
        if not audio:
            raise ValueError("no audio given (empty list)")
        waves, names, any_path = [], [], False
        for i, item in enumerate(audio):
            if _is_path(item):
                waves.append(load_audio(item))
                names.append(str(item))
                any_path = True
            else:
                waves.append(_one_wave(item, sample_rate, f"waveform {i}"))
                names.append(f"<waveform {i}>")
        return waves, (names if any_path else None)
    raise TypeError(
        f"cannot embed {type(audio).__name__}: expected a waveform (tensor/array), a list of "
        "waveforms, a path or a list of paths"
    )


# --------------------------------------------------------------------------------------------
# The embedding computation
# --------------------------------------------------------------------------------------------


@dataclass
class _Segment:
    clip: int
    raw: torch.Tensor  # (n, 128) unnormalised fbank frames of this clip/window
    n_samples: int  # audio samples the segment covers (for the real-column rule)
    first_column: int  # global column index of its column 0
    columns: torch.Tensor | None = None  # (k, D) real columns, filled by _run_segments


def _padded_length(n_frames: int, input_tdim: int, tstride: int) -> int:
    cover = PATCH + math.ceil(max(n_frames - PATCH, 0) / tstride) * tstride
    return max(input_tdim, cover)


POOLINGS = ("mean", "mean+std", "bands", "bands+std")


def _run_segments(
    model,
    segments: list[_Segment],
    layers: tuple[int, ...],
    batch_size: int,
    device,
    bands: bool = False,
) -> None:
    cfg = model.config
    n_streams = num_layers(model)
    need_streams = any(i != n_streams - 1 for i in layers)
    n_cls = cfg.num_class_tokens
    dtype = next(model.parameters()).dtype
    groups: dict[int, list[_Segment]] = {}
    for seg in segments:
        length = _padded_length(seg.raw.shape[0], cfg.input_tdim, cfg.tstride)
        groups.setdefault(length, []).append(seg)
    for length, group in sorted(groups.items()):
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            fb = torch.stack(
                [
                    torch.nn.functional.pad(s.raw.to(device), (0, 0, 0, length - s.raw.shape[0]))
                    for s in chunk
                ]
            )
            fb = ((fb - cfg.norm_mean) / (2.0 * cfg.norm_std)).to(dtype)
            enc = model.encode(fb, return_layers=need_streams)
            f_dim, t_dim = enc.grid
            parts = []
            for idx in layers:
                if idx == n_streams - 1:
                    tokens = enc.patch_tokens
                else:
                    tokens = enc.layers[idx][:, n_cls:]
                grid = tokens.reshape(len(chunk), f_dim, t_dim, -1).float()
                if bands:  # keep the frequency rows apart: (B, t, f * E)
                    parts.append(grid.permute(0, 2, 1, 3).reshape(len(chunk), t_dim, -1))
                else:
                    parts.append(grid.mean(dim=1))
            cols = torch.cat(parts, dim=-1)  # (B, t_dim, D)
            for b, seg in enumerate(chunk):
                k = _columns(seg.raw.shape[0], seg.n_samples, cfg)
                seg.columns = cols[b, :k].to("cpu")


def _fbank_raw(wave: torch.Tensor, device) -> torch.Tensor:
    wave = wave.to(device)
    if num_frames(wave.shape[-1]) == 0:
        return torch.zeros(0, 128, dtype=torch.float32, device=device)
    return fbank(wave).float()


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

    All given audio is decoded before the model runs: for thousands of files use
    ``ssamba embed`` (or call this in chunks).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    layers_n = resolve_layers(model, layers)
    cfg = model.config
    if device is None:
        device = model_device(model)
    else:
        device = torch.device(device)
        if model_device(model) != device:
            model.to(device)
    waves, names = _as_waves(audio, sample_rate)

    win_frames = hop_cols = None
    if window_seconds is not None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
        win_frames = max(PATCH, int(round(window_seconds * 100)))
        cols_per_window = _columns(win_frames, 160 * (win_frames - 1) + 400, cfg)
        hop = window_seconds if hop_seconds is None else hop_seconds
        if hop <= 0:
            raise ValueError(f"hop_seconds must be > 0, got {hop_seconds}")
        if hop > window_seconds:
            raise ValueError(
                f"hop_seconds ({hop}) > window_seconds ({window_seconds}) would skip audio"
            )
        hop_cols = max(1, min(cols_per_window, int(round(hop * 100 / cfg.tstride))))
    elif hop_seconds is not None:
        raise ValueError("hop_seconds needs window_seconds")

    segments: list[_Segment] = []
    per_clip: list[list[_Segment]] = []
    total_cols: list[int] = []
    with torch.inference_mode():
        for i, wave in enumerate(waves):
            raw = _fbank_raw(wave, device)
            n_samples = int(wave.shape[-1])
            n = raw.shape[0]
            total = _columns(n, n_samples, cfg)
            total_cols.append(total)
            segs = []
            if win_frames is None or n <= win_frames:
                segs.append(_Segment(i, raw, n_samples, 0))
            else:
                start_col = 0
                while True:
                    a = start_col * cfg.tstride  # first frame of the window
                    seg_raw = raw[a : a + win_frames]
                    # samples this window covers: up to the end of its last frame, or the clip end
                    end = min(n_samples, 160 * (a + seg_raw.shape[0] - 1) + 400)
                    segs.append(_Segment(i, seg_raw, end - 160 * a, start_col))
                    if a + win_frames >= n:
                        break
                    start_col += hop_cols
            per_clip.append(segs)
            segments.extend(segs)

        was_training = model.training
        model.eval()
        try:
            _run_segments(
                model, segments, layers_n, batch_size, device, pooling.startswith("bands")
            )
        finally:
            model.train(was_training)

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
        stamps.append(column_times(cols.shape[0], cfg.tstride))
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
# The ``ssamba embed`` command
# --------------------------------------------------------------------------------------------

INDEX_FILE = "index.json"
PARTS_DIR = ".parts"


def add_embed_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "embed",
        help="write clip (and frame) embeddings of audio files",
        description=(
            "Embed audio files with a checkpoint: one .npy per input file (mirroring the "
            "relative names), or a single .npz/.safetensors, plus index.json (settings and the "
            "file -> output mapping). Re-running into the same --out skips files already done."
        ),
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio files, folders (searched recursively) or manifests (JSON, CSV, list)",
    )
    p.add_argument(
        "--checkpoint",
        "-c",
        required=True,
        help="save_pretrained folder, official .pth, or preset name (random weights)",
    )
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output folder")
    p.add_argument("--format", choices=("npy", "npz", "safetensors"), default="npy")
    _add_embedding_options(p)
    p.add_argument(
        "--frames",
        action="store_true",
        help="also write frame embeddings (T, D) and their timestamps (seconds)",
    )
    p.add_argument(
        "--on-bad-file",
        choices=("error", "skip"),
        default="error",
        help="stop at an unreadable file (default) or log it, leave it out and count it",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over when --out holds embeddings made with other settings",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_embed)


def _add_embedding_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``embed`` and ``probe``."""
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-1],
        metavar="I",
        help="layer indices to concatenate (default -1: the final normalised output)",
    )
    p.add_argument(
        "--window", type=float, metavar="S", help="process long audio in windows of S seconds"
    )
    p.add_argument("--hop", type=float, metavar="S", help="window hop in seconds (default: window)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="clips per batch (8)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _command_error(message: str) -> Exception:
    try:
        from ssamba.cli import CommandError
    except ImportError:  # pragma: no cover - cli is part of the package
        return ValueError(message)
    return CommandError(message)


def load_checkpoint_for_cli(spec: str, device: str | None):
    """Load ``--checkpoint`` (folder, .pth or preset); warns on stderr for random weights."""
    from ssamba.checkpoints import CheckpointError, load_model

    try:
        model = load_model(spec)
    except (CheckpointError, ValueError) as err:
        raise _command_error(str(err)) from None
    path = Path(spec)
    if not path.exists():
        print(
            f"warning: {spec!r} is a preset name: the model has RANDOM weights "
            "(pass a checkpoint folder or .pth for trained ones)",
            file=sys.stderr,
        )
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(dev).eval()


def collect_inputs(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """(file, base folder) for every audio file named by ``inputs`` (files, folders, manifests)."""
    from ssamba.data import AUDIO_EXTENSIONS, read_manifest

    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise _command_error(f"{path}: no such file or folder")
        if path.is_dir():
            for ex in read_manifest(path, ignore_labels=True):
                found.append((ex.path, path))
        elif path.suffix.lower() in AUDIO_EXTENSIONS:
            found.append((path, path.parent))
        else:
            for ex in read_manifest(path, ignore_labels=True):
                found.append((ex.path, ex.path.parent))
    seen, unique = set(), []
    for file, base in found:
        key = os.path.abspath(file)
        if key not in seen:
            seen.add(key)
            unique.append((Path(key), Path(os.path.abspath(base))))
    return unique


def output_keys(files: list[tuple[Path, Path]]) -> list[str]:
    """Relative output names (POSIX, suffix dropped) mirroring the inputs below their common
    base folder; files that would collide keep their audio suffix (``a.wav``, ``a.flac``)."""
    bases = [str(base) for _, base in files]
    root = Path(os.path.commonpath(bases)) if bases else Path(".")
    rels = [file.relative_to(root) for file, _ in files]
    stems = [rel.with_suffix("").as_posix() for rel in rels]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else rel.as_posix() for s, rel in zip(stems, rels, strict=True)]


def _settings(args, model, fingerprint: str) -> dict:
    return {
        "checkpoint": str(Path(args.checkpoint).resolve())
        if Path(args.checkpoint).exists()
        else args.checkpoint,
        "model_sha256": fingerprint,
        "arch": model.config.arch,
        "embed_dim": model.config.embed_dim,
        "layers": list(args.layers),
        "window_seconds": args.window,
        "hop_seconds": args.hop,
    }


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _npy_names(key: str, frames: bool) -> dict[str, str]:
    names = {"clip": f"{key}.npy"}
    if frames:
        names["frames"] = f"{key}.frames.npy"
        names["timestamps"] = f"{key}.timestamps.npy"
    return names


def run_embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ssamba.audio import AudioError

    if args.batch_size < 1:
        raise _command_error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.hop is not None and args.window is None:
        raise _command_error("--hop needs --window")
    files = collect_inputs(args.inputs)
    keys = output_keys(files)
    model = load_checkpoint_for_cli(args.checkpoint, args.device)
    try:
        resolve_layers(model, args.layers)
    except (ValueError, TypeError) as err:
        raise _command_error(str(err)) from None
    settings = _settings(args, model, model_fingerprint(model))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX_FILE
    single = args.format != "npy"
    single_file = out / f"embeddings.{args.format}" if single else None
    previous: dict = {}
    if index_path.is_file():
        try:
            previous = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        old = previous.get("settings")
        if old is not None and (old != settings or previous.get("format") != args.format):
            if not args.overwrite:
                changed = sorted(k for k in settings if old.get(k) != settings[k])
                if previous.get("format") != args.format:
                    changed.append("format")
                raise _command_error(
                    f"{out} holds embeddings made with other settings ({', '.join(changed)}); "
                    "use another --out or pass --overwrite"
                )
            _remove_outputs(out, previous)
            previous = {}
    stage = out / PARTS_DIR if single else out
    existing: dict[str, np.ndarray] = {}
    if single and single_file.is_file() and previous:
        existing = _read_single(single_file)

    entries: dict[str, dict] = dict(previous.get("files", {}))
    # A file embedded by an earlier run keeps its key (the common base folder may differ now).
    used = {entry["key"] for entry in entries.values()}
    todo: list[int] = []
    for i, (file, _) in enumerate(files):
        if str(file) in entries:
            keys[i] = entries[str(file)]["key"]
        elif keys[i] in used:
            n = 1
            while f"{keys[i]}~{n}" in used:
                n += 1
            keys[i] = f"{keys[i]}~{n}"
        used.add(keys[i])
        names = _npy_names(keys[i], args.frames)
        done = all((stage / n).is_file() for n in names.values())
        if single and not done:
            done = all(f"{kind}/{keys[i]}" in existing for kind in names)
        if done:
            entries.setdefault(str(file), {"key": keys[i]})
        else:
            todo.append(i)
    n_done = len(files) - len(todo)
    if n_done:
        print(f"{n_done} of {len(files)} files already embedded in {out}: skipped")

    index = {"format": args.format, "settings": settings, "files": entries, "bad_files": {}}
    if single:
        index["file"] = single_file.name
    _write_json(index_path, index)

    bad: dict[str, str] = {}
    embedded = 0
    bar = tqdm(total=len(todo), unit="file", disable=args.no_progress or not todo, file=sys.stderr)
    try:
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start : start + args.batch_size]
            waves, ok = [], []
            for i in batch:
                try:
                    waves.append(load_audio(files[i][0]))
                    ok.append(i)
                except AudioError as err:
                    if args.on_bad_file == "error":
                        raise _command_error(
                            f"cannot embed {err} (--on-bad-file skip leaves bad files out)"
                        ) from None
                    bad[str(files[i][0])] = err.problem
                    tqdm.write(f"skipped bad file {err}", file=sys.stderr)
            if waves:
                emb = embed(
                    model,
                    waves,
                    sample_rate=SAMPLE_RATE,
                    layers=args.layers,
                    window_seconds=args.window,
                    hop_seconds=args.hop,
                    batch_size=args.batch_size,
                )
                for j, i in enumerate(ok):
                    names = _npy_names(keys[i], args.frames)
                    if args.frames:
                        _save_npy(stage / names["frames"], emb.frames[j].numpy())
                        _save_npy(stage / names["timestamps"], emb.timestamps[j].numpy())
                    _save_npy(stage / names["clip"], emb.clip[j].numpy())
                    entries[str(files[i][0])] = {
                        "key": keys[i],
                        "seconds": round(emb.durations[j], 6),
                        "num_frames": int(emb.frames[j].shape[0]),
                    }
                    embedded += 1
            bar.update(len(batch))
    finally:
        bar.close()
        index["bad_files"] = bad
        for entry in index["files"].values():
            if not single:
                entry.update({k: v for k, v in _npy_names(entry["key"], args.frames).items()})
        _write_json(index_path, index)

    if single:
        _pack_single(single_file, stage, existing, index, args.frames)
    msg = f"embedded {embedded} files into {out}"
    if n_done:
        msg += f", {n_done} already done"
    if bad:
        msg += f", {len(bad)} bad files skipped (listed in {INDEX_FILE})"
    print(msg)
    return 0


def _remove_outputs(out: Path, index: dict) -> None:
    """Delete the outputs an earlier run listed in its index (before --overwrite)."""
    if (out / PARTS_DIR).exists():
        shutil.rmtree(out / PARTS_DIR)
    if index.get("file"):
        (out / index["file"]).unlink(missing_ok=True)
    if index.get("format") != "npy":
        return
    for entry in index.get("files", {}).values():
        for name in _npy_names(entry["key"], True).values():
            (out / name).unlink(missing_ok=True)


def _read_single(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    from safetensors.numpy import load_file

    return load_file(str(path))


def _pack_single(path: Path, stage: Path, existing: dict, index: dict, frames: bool) -> None:
    """Gather the staged per-file arrays and the existing ones into one npz/safetensors file."""
    arrays = dict(existing)
    for entry in index["files"].values():
        for kind, name in _npy_names(entry["key"], frames).items():
            part = stage / name
            if part.is_file():
                arrays[f"{kind}/{entry['key']}"] = np.load(part)
    keep = {
        f"{kind}/{entry['key']}"
        for entry in index["files"].values()
        for kind in _npy_names(entry["key"], frames)
    }
    arrays = {k: np.ascontiguousarray(v) for k, v in sorted(arrays.items()) if k in keep}
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".npz":
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    else:
        from safetensors.numpy import save_file

        save_file(arrays, str(tmp))
    os.replace(tmp, path)
    for entry in index["files"].values():
        entry.update({kind: f"{kind}/{entry['key']}" for kind in _npy_names(entry["key"], frames)})
    _write_json(path.parent / INDEX_FILE, index)
    if stage.name == PARTS_DIR and stage.exists():
        shutil.rmtree(stage)

"""The HEAR 2021 common API (https://hearbenchmark.com/hear-api.html) for SSAMBA/SSAST models.

    from ssamba import hear
    model = hear.load_model("path/to/checkpoint")           # folder, official .pth; "" = random
    scene = hear.get_scene_embeddings(audio, model)          # (n_sounds, scene_embedding_size)
    emb, ts = hear.get_timestamp_embeddings(audio, model)    # (n, T, size), (n, T) milliseconds

``audio`` is a float tensor ``(n_sounds, n_samples)`` at 16 kHz. The computation runs on the
model's device; the results are float32 tensors on the device of ``audio``.

Scene embeddings are the clip embeddings of :func:`ssamba.embeddings.embed`: the mean patch
token over the real audio (final normalised output by default; ``layers=[...]`` concatenates
others).

Timestamp embeddings, and why they are interpolated: a patch token covers 16 fbank frames and
neighbouring patch columns are ``tstride`` frames apart, 160 ms for the pretrained models (stride
16). HEAR asks for a hop of at most 50 ms (its onset tolerance). The options were

- a time stride of 5 or less: 3x (or more) tokens and compute per clip, and overlapping patches
  the pretrained weights never saw (positional embeddings would be resampled 3x too), so the
  features shift away from what was trained;
- per-frame features: there are none; the encoder only sees 16-frame patches;
- interpolating the column embeddings onto a regular grid: free, keeps the model exactly as
  trained, and is what several HEAR 2021 submissions with patch-based encoders did.

We interpolate: the column embeddings (:func:`ssamba.embeddings.embed` frames, centred at
``(10 a + 87.5) ms`` for a column starting at fbank frame ``a``) are linearly interpolated onto
timestamps ``i * hop_ms`` (default 50 ms; ``load_model(..., hop_ms=25)`` for finer), each
computed from its index (no accumulated rounding), ``i = 0 .. floor(duration / hop)``: the grid
starts at 0 and ends within one hop of the end of the audio, never after it. Before the first and
after the last column centre the nearest column's embedding is held. The temporal resolution of
the content is still that of the columns (160 ms); the grid only makes it addressable at 50 ms.

Long audio: by default each clip is processed in windows of the model's ``input_tdim`` frames
(10.24 s for the pretrained models) with a half-window hop, so the positional embedding is used
exactly as trained; each column comes from the window in which it is most central. Shorter audio
is padded to ``input_tdim`` frames as the reference does. ``window_seconds=None`` processes every
clip whole.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from fractions import Fraction

import torch

from ssamba.checkpoints import load_model as load_checkpoint
from ssamba.constants import SAMPLE_RATE
from ssamba.embeddings import embed, model_device, resolve_layers
from ssamba.models.model import create_model

__all__ = [
    "HearModel",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
    "timestamps_ms",
]

DEFAULT_HOP_MS = 50.0
HEAR_OPTIONS = ("layers", "hop_ms", "window_seconds", "hop_seconds", "batch_size")


class HearModel(torch.nn.Module):
    """An :class:`~ssamba.models.AudioModel` with the attributes the HEAR API requires."""

    sample_rate: int = SAMPLE_RATE

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        layers: Sequence[int] | int | None = None,
        hop_ms: float = DEFAULT_HOP_MS,
        window_seconds: float | str | None = "model",
        hop_seconds: float | None = None,
        batch_size: int = 8,
    ):
        super().__init__()
        self.model = model.eval()
        self.layers = tuple(
            [-1] if layers is None else ([layers] if isinstance(layers, int) else layers)
        )
        resolve_layers(model, self.layers)  # fail early on bad indices
        if not (isinstance(hop_ms, (int, float)) and 0 < hop_ms):
            raise ValueError(f"hop_ms must be a positive number, got {hop_ms!r}")
        self.hop_ms = float(hop_ms)
        if window_seconds == "model":
            window_seconds = model.config.input_tdim / 100.0
            hop_seconds = window_seconds / 2 if hop_seconds is None else hop_seconds
        self.window_seconds = window_seconds
        self.hop_seconds = hop_seconds
        self.batch_size = int(batch_size)
        size = int(model.config.embed_dim * len(self.layers))
        self.scene_embedding_size: int = size
        self.timestamp_embedding_size: int = size

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return get_scene_embeddings(audio, self)

    def extra_repr(self) -> str:
        return (
            f"layers={self.layers}, hop_ms={self.hop_ms}, window_seconds={self.window_seconds}, "
            f"embedding_size={self.scene_embedding_size}"
        )


def load_model(model_file_path: str = "", **kwargs) -> HearModel:
    """Load a model for the HEAR API.

    ``model_file_path``: a ``save_pretrained`` folder or an official ``.pth`` (anything
    :func:`ssamba.load_model` reads). Empty: a randomly initialised ``ssamba_tiny`` (seeded, so
    reproducible), with a warning. Keyword arguments ``layers``, ``hop_ms``, ``window_seconds``,
    ``hop_seconds``, ``batch_size`` configure the embeddings (see :class:`HearModel`); the
    others are model overrides passed to :func:`ssamba.load_model` / ``create_model``.
    """
    options = {k: kwargs.pop(k) for k in HEAR_OPTIONS if k in kwargs}
    if not model_file_path:
        warnings.warn(
            "ssamba.hear.load_model: no model file given, using a RANDOMLY initialised "
            "ssamba_tiny (seed 0): its embeddings are only good for testing the API",
            UserWarning,
            stacklevel=2,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create_model("ssamba_tiny", **kwargs)
    else:
        model = load_checkpoint(model_file_path, **kwargs)
    return HearModel(model, **options)


def _as_hear_model(model) -> HearModel:
    if isinstance(model, HearModel):
        return model
    if hasattr(model, "config") and hasattr(model, "encode"):
        return HearModel(model)
    raise TypeError(f"expected a model from ssamba.hear.load_model, got {type(model).__name__}")


def _check_audio(audio) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor):
        audio = torch.as_tensor(audio)
    if audio.dim() != 2:
        raise ValueError(f"expected audio of shape (n_sounds, n_samples), got {tuple(audio.shape)}")
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise ValueError(f"empty audio batch {tuple(audio.shape)}")
    return audio


def _embed(audio: torch.Tensor, hear_model: HearModel):
    device = model_device(hear_model.model)
    return embed(
        hear_model.model,
        audio.detach().to(device, torch.float32),
        sample_rate=SAMPLE_RATE,
        layers=hear_model.layers,
        window_seconds=hear_model.window_seconds,
        hop_seconds=hear_model.hop_seconds,
        batch_size=hear_model.batch_size,
        device=device,
    )


def timestamps_ms(num_samples: int, hop_ms: float, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``i * hop_ms`` for ``i = 0 .. floor(duration_ms / hop_ms)`` (float64, milliseconds).

    The count is computed in exact rational arithmetic and every value from its index, so there
    is no rounding drift however long the audio.
    """
    duration_ms = Fraction(num_samples * 1000, sample_rate)
    count = math.floor(duration_ms / Fraction(hop_ms)) + 1
    return torch.arange(count, dtype=torch.float64) * hop_ms


def _interpolate(frames: torch.Tensor, centres_ms: torch.Tensor, at_ms: torch.Tensor):
    """Linear interpolation of (T, D) ``frames`` at ``at_ms``; edges held constant."""
    if frames.shape[0] == 1:
        return frames.expand(at_ms.shape[0], -1)
    hi = torch.searchsorted(centres_ms, at_ms).clamp(1, frames.shape[0] - 1)
    lo = hi - 1
    weight = ((at_ms - centres_ms[lo]) / (centres_ms[hi] - centres_ms[lo])).clamp(0.0, 1.0)
    weight = weight.to(frames.dtype).unsqueeze(-1)
    return frames[lo] * (1.0 - weight) + frames[hi] * weight


def get_scene_embeddings(audio: torch.Tensor, model) -> torch.Tensor:
    """One embedding per sound: ``(n_sounds, model.scene_embedding_size)`` float32."""
    model = _as_hear_model(model)
    audio = _check_audio(audio)
    emb = _embed(audio, model)
    return emb.clip.to(device=audio.device, dtype=torch.float32)


def get_timestamp_embeddings(audio: torch.Tensor, model) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings every ``model.hop_ms`` ms: ``(n_sounds, T, size)`` float32 and timestamps
    ``(n_sounds, T)`` in milliseconds (float32), on the device of ``audio``."""
    model = _as_hear_model(model)
    audio = _check_audio(audio)
    emb = _embed(audio, model)
    at_ms = timestamps_ms(audio.shape[1], model.hop_ms)
    out = torch.stack(
        [
            _interpolate(frames, times.to(torch.float64) * 1000.0, at_ms)
            for frames, times in zip(emb.frames, emb.timestamps, strict=True)
        ]
    )
    stamps = at_ms.to(torch.float32).unsqueeze(0).expand(audio.shape[0], -1).contiguous()
    return (
        out.to(device=audio.device, dtype=torch.float32),
        stamps.to(audio.device),
    )

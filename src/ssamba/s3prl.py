"""An s3prl (SUPERB) upstream for any ssamba checkpoint, SSAMBA or SSAST.

The official SSAMBA/SSAST SUPERB evaluations (speaker ID, emotion) ran through an s3prl
``UpstreamExpert``; this module offers the same contract without needing s3prl::

    from ssamba.s3prl import UpstreamExpert
    upstream = UpstreamExpert("ssamba_base_400", window_secs=10.0)   # any load_model source
    out = upstream([wave_a, wave_b])             # 1-D 16 kHz float tensors of any lengths
    out["hidden_states"]                         # L + 1 tensors, each (batch, frames, dim)
    upstream.get_downsample_rates("hidden_states")   # 160 * tstride samples per frame

To use it inside s3prl, put ``from ssamba.s3prl import *`` in ``s3prl/upstream/ssamba/
hubconf.py`` and run ``run_downstream.py -u ssamba_base -k CKPT``.

What matches the official expert (``src/finetune/*/ssast/expert.py``):

- windows of ``window_secs`` (1 s for Speech Commands, 6 s for IEMOCAP, 10 s for VoxCeleb1), one
  after the other, the waveform zero padded to cover the last one; every window's Kaldi fbank
  normalised with the model's statistics;
- patches at stride 10 in frequency and time (``stride``), so a frame is a patch column, 100 ms;
  ``get_downsample_rates`` = 160 * tstride;
- per frame, the frequency rows of the column concatenated (``pooling="bands"``: f_dim * dim
  features, the official layout), or averaged (``pooling="mean"``: dim features);
- outputs trimmed to ``ceil(max(len(wav)) / rate)`` frames.

Where it differs, on purpose: every window also reads the ``16 - tstride`` fbank frames that
follow it, so that it yields exactly ``window / tstride`` columns and windows lie on one column
grid. The official windows yield one column fewer each (9 per second at 1-s windows), so its
frame count falls behind s3prl's expected length by one frame per window and trips s3prl's
length check on recordings of a few windows or more. ``hidden_states`` holds the patch-embedding
stream (after the positional embedding) and then every layer (Mamba layer pair, or ViT block),
the last one being the encoder's final normalised output (as ``ssamba.embed``'s layer ``-1``);
the official expert returned the blocks alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.audio import FRAME_SAMPLES, HOP_SAMPLES, fbank_frames, input_batch
from ssamba.checkpoints import load_model
from ssamba.constants import FRAMES_PER_SECOND, PATCH
from ssamba.errors import UsageError
from ssamba.models.config import RELEASES
from ssamba.models.model import AudioModel
from ssamba.models.patches import pool_columns

__all__ = [
    "POOLINGS",
    "WINDOWS",
    "UpstreamExpert",
    "ssamba_base",
    "ssamba_small",
    "ssamba_tiny",
    "ssast_base",
    "ssast_small",
    "ssast_tiny",
    "upstream",
]

POOLINGS = ("bands", "mean")
WINDOWS = {"speech_commands": 1.0, "iemocap": 6.0, "voxceleb1": 10.0}  # the official choices
OFFICIAL_STRIDE = 10


class UpstreamExpert(nn.Module):
    """s3prl's upstream contract for an ssamba model (see the module docstring).

    Args:
        ckpt: anything :func:`ssamba.load_model` accepts (folder, official .pth, released
            name, Hub id, preset), or an :class:`~ssamba.models.AudioModel` (used as given).
        model_size: accepted for the official signature and ignored (the weights tell).
        window_secs: window length in seconds.
        stride: patch stride in frequency and time when loading ``ckpt`` (official: 10).
        pooling: ``"bands"`` (official) or ``"mean"`` over a column's frequency rows.
        max_windows: windows run through the model at once (bounds the memory).
    """

    def __init__(
        self,
        ckpt: str | Path | AudioModel,
        model_size: str | None = None,
        window_secs: float = 10.0,
        *,
        stride: int = OFFICIAL_STRIDE,
        pooling: str = "bands",
        max_windows: int = 16,
        **kwargs,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise UsageError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if not window_secs > 0 or max_windows < 1:
            raise UsageError("window_secs must be > 0 and max_windows >= 1")
        self.tstride = ckpt.config.tstride if isinstance(ckpt, AudioModel) else stride
        self.pooling, self.max_windows = pooling, max_windows
        # Columns per window: whole columns, so that windows lie on one column grid.
        self.columns = max(1, round(window_secs * FRAMES_PER_SECOND / self.tstride))
        self.window_frames = (self.columns - 1) * self.tstride + PATCH
        if isinstance(ckpt, AudioModel):
            self.model = ckpt
        else:  # laid out for one window: the positional embedding is resized once, here
            layout = dict(fstride=stride, tstride=stride, input_tdim=self.window_frames)
            self.model = load_model(ckpt, num_classes=0, pretrain_heads=False, **layout)
        self.window_secs = self.columns * self.tstride / FRAMES_PER_SECOND  # the hop, exactly

    def get_downsample_rates(self, key: str | None = None) -> int:
        """Waveform samples per output frame (one patch column)."""
        return HOP_SAMPLES * self.tstride

    def forward(self, wavs: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """``wavs``: 1-D 16 kHz waveforms -> ``{"hidden_states": [...]}``, each
        (batch, ceil(max_len / rate), dim)."""
        if len(wavs) == 0:
            raise UsageError("no waveforms given")
        lengths = [int(w.shape[-1]) for w in wavs]
        n_frames = math.ceil(max(lengths) / self.get_downsample_rates())
        n_windows = max(1, math.ceil(n_frames / self.columns))
        windows = self._windows(wavs, n_windows)  # (batch * n_windows, frames, mel)
        streams = [
            torch.cat(parts)
            for parts in zip(
                *(self._streams(chunk) for chunk in windows.split(self.max_windows)), strict=True
            )
        ]
        batch = len(wavs)
        hidden = [
            s.reshape(batch, n_windows * self.columns, s.shape[-1])[:, :n_frames] for s in streams
        ]
        return {"hidden_states": hidden, "last_hidden_state": hidden[-1]}

    def _windows(self, wavs: Sequence[torch.Tensor], n_windows: int) -> torch.Tensor:
        """Every clip's windows as normalised fbank, clip-major: (batch * n_windows, F, mel)."""
        hop = self.columns * self.tstride  # fbank frames between window starts
        need = HOP_SAMPLES * ((n_windows - 1) * hop + self.window_frames - 1) + FRAME_SAMPLES
        device = next(self.model.parameters()).device
        cfg = self.model.config
        out = []
        for wav in wavs:
            if wav.dim() != 1:
                raise UsageError(f"expected 1-D waveforms, got shape {tuple(wav.shape)}")
            # the front end is fixed: gradients flow into the model (fine-tuning), not the audio
            padded = F.pad(wav.detach().to(device, torch.float32), (0, need - wav.shape[-1]))
            feats = fbank_frames(padded)
            for k in range(n_windows):
                out.append(feats[k * hop : k * hop + self.window_frames])
        return input_batch(out, self.window_frames, (cfg.norm_mean, cfg.norm_std))

    def _streams(self, windows: torch.Tensor) -> list[torch.Tensor]:
        """(n, F, mel) windows -> per stream (n * columns, features): the patch-embedding
        stream, each layer's, and the final normalised output."""
        model = self.model
        dtype = next(model.parameters()).dtype
        tokens, grid = model.embed_tokens(windows.to(dtype))
        final, layers = model.encoder(tokens, return_layers=True)
        n_cls = model.config.num_class_tokens
        streams = [tokens, *layers[:-1], final]
        bands = self.pooling == "bands"  # (n, t, f * dim): the official layout
        return [pool_columns(s[:, n_cls:], grid, bands).flatten(0, 1) for s in streams]


def upstream(ckpt: str | Path | AudioModel, window_secs: float = 10.0, **kwargs) -> UpstreamExpert:
    """An :class:`UpstreamExpert` (s3prl hubconf style: ``refresh`` and other s3prl keyword
    arguments are accepted and ignored)."""
    kwargs.pop("refresh", None)
    known = {k: kwargs[k] for k in ("stride", "pooling", "max_windows") if k in kwargs}
    return UpstreamExpert(ckpt, window_secs=window_secs, **known)


def _released_or_preset(size: str, arch: str) -> str:
    """The default weights of an entry function: SSAMBA's released 400-patch checkpoint
    (looked up by name), else the preset (random weights, with a warning)."""
    name = f"{arch}_{size}_400"
    return name if name in RELEASES else f"{arch}_{size}"


def ssamba_tiny(ckpt: str | None = None, window_secs: float = 10.0, **kwargs) -> UpstreamExpert:
    """SSAMBA tiny (default weights: the released ``ssamba_tiny_400``)."""
    return upstream(ckpt or _released_or_preset("tiny", "ssamba"), window_secs, **kwargs)


def ssamba_small(ckpt: str | None = None, window_secs: float = 10.0, **kwargs) -> UpstreamExpert:
    """SSAMBA small (default weights: the released ``ssamba_small_400``)."""
    return upstream(ckpt or _released_or_preset("small", "ssamba"), window_secs, **kwargs)


def ssamba_base(ckpt: str | None = None, window_secs: float = 10.0, **kwargs) -> UpstreamExpert:
    """SSAMBA base (default weights: the released ``ssamba_base_400``)."""
    return upstream(ckpt or _released_or_preset("base", "ssamba"), window_secs, **kwargs)


def ssast_tiny(ckpt: str | None = None, window_secs: float = 10.0, **kwargs) -> UpstreamExpert:
    """SSAST tiny (pass ``ckpt``: without it the weights are random)."""
    return upstream(ckpt or _released_or_preset("tiny", "ssast"), window_secs, **kwargs)


def ssast_small(ckpt: str | None = None, window_secs: float = 10.0, **kwargs) -> UpstreamExpert:
    """SSAST small (pass ``ckpt``: without it the weights are random)."""
    return upstream(ckpt or _released_or_preset("small", "ssast"), window_secs, **kwargs)


def ssast_base(ckpt: str | None = None, window_secs: float = 10.0, **kwargs) -> UpstreamExpert:
    """SSAST base (pass ``ckpt``: without it the weights are random)."""
    return upstream(ckpt or _released_or_preset("base", "ssast"), window_secs, **kwargs)

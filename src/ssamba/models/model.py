"""AudioModel: patches -> encoder (SSAMBA or SSAST) -> pretraining heads or fine-tuning head.

Forward modes (docs/model.md):
    model(fbank)                          logits (B, classes); the pooled embedding if classes == 0
    model.forward_features(fbank)         patch tokens after the final norm(s), (B, N, E)
    model.encode(fbank, return_layers=..) everything: patch and class tokens, grid, layer streams
    model.forward_pretrain(fbank, task="mpc"|"mpg", mask_index=...)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ssamba.constants import PATCH
from ssamba.models import saving
from ssamba.models.config import ModelConfig, patch_grid, preset_config
from ssamba.models.objectives import info_nce, masked_mse
from ssamba.models.patches import (
    PatchEmbed,
    check_mask_size,
    draw_mask_index,
    fbank_to_image,
    patchify,
    resize_pos_embed,
)
from ssamba.models.ssamba import MambaEncoder
from ssamba.models.ssast import ViTEncoder

BANDS_STD_EPS = 1e-6  # inside the square root of the "bands+std" head input


@dataclass
class EncoderOutput:
    patch_tokens: torch.Tensor  # (B, f_dim * t_dim, E), token = f * t_dim + t
    class_tokens: torch.Tensor  # (B, n_cls, E)
    grid: tuple[int, int]  # (f_dim, t_dim)
    layers: list[torch.Tensor] | None = None  # per pair (SSAMBA) / block (SSAST), with class tokens


def prediction_head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, PATCH * PATCH))


class AudioModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(dim, cfg.fstride, cfg.tstride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if cfg.arch == "ssast" else None
        n_tokens = cfg.grid[0] * cfg.grid[1] + cfg.num_class_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, dim))
        self.encoder = MambaEncoder(cfg) if cfg.arch == "ssamba" else ViTEncoder(cfg)
        if cfg.pretrain_heads:
            self.mask_embed = nn.Parameter(torch.zeros(1, 1, dim))
            self.cpredlayer = prediction_head(dim)
            self.gpredlayer = prediction_head(dim)
        self.mlp_head = (
            nn.Sequential(nn.LayerNorm(cfg.head_dim), nn.Linear(cfg.head_dim, cfg.num_classes))
            if cfg.num_classes
            else None
        )
        for p in (self.cls_token, self.dist_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        if cfg.pretrain_heads:
            nn.init.xavier_normal_(self.mask_embed)

    # ----------------------------------------------------------------- tokens
    @property
    def grid(self) -> tuple[int, int]:
        return self.config.grid

    def input_grid(self, fbank: torch.Tensor) -> tuple[int, int]:
        cfg = self.config
        if fbank.dim() != 3 or fbank.shape[-1] != cfg.num_mel_bins:
            raise ValueError(
                f"expected a (batch, frames, {cfg.num_mel_bins}) fbank, got {tuple(fbank.shape)}"
            )
        if fbank.shape[1] < PATCH:
            raise ValueError(f"input has {fbank.shape[1]} frames; at least {PATCH} are needed")
        return patch_grid(cfg.num_mel_bins, fbank.shape[1], cfg.fstride, cfg.tstride)

    def class_tokens(self, batch: int) -> torch.Tensor:
        tokens = [self.cls_token] + ([self.dist_token] if self.dist_token is not None else [])
        return torch.cat(tokens, dim=1).expand(batch, -1, -1)

    def positional_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The positional embedding for ``grid``: the stored one, resized if the input differs."""
        n_cls = self.config.num_class_tokens
        if grid == self.grid:
            return self.pos_embed
        patches = resize_pos_embed(self.pos_embed[:, n_cls:], self.grid, grid)
        return torch.cat([self.pos_embed[:, :n_cls], patches], dim=1)

    def embed_tokens(self, fbank: torch.Tensor, mask_index: torch.Tensor | None = None):
        """Patch embedding, mask tokens at ``mask_index``, class tokens, positional embedding."""
        grid = self.input_grid(fbank)
        x = self.patch_embed(fbank_to_image(fbank))
        if mask_index is not None:
            mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
            mask.scatter_(1, mask_index, True)
            x = torch.where(mask.unsqueeze(-1), self.mask_embed.to(x.dtype), x)
        x = torch.cat([self.class_tokens(x.shape[0]).to(x.dtype), x], dim=1)
        return x + self.positional_embedding(grid), grid

    def embed_views(self, fbank: torch.Tensor, mask_index: torch.Tensor, drop: bool = False):
        """Tokens of ``M`` masked views of every clip (the teacher objective's student input):
        ``mask_index`` (B, M, K) holds each view's hidden patches; returns (tokens
        (B * M, L, E), rows of view ``m`` of clip ``b`` at ``b * M + m``; the visible patch ids
        (B * M, N - K), sorted, or None).

        The patch embedding is computed once per clip and shared by its views. ``drop=False``:
        hidden patches become ``mask_embed`` in place, exactly as :meth:`embed_tokens` (L = n_cls
        + N). ``drop=True``: they leave the sequence (MAE-style; L = n_cls + N - K), and each
        visible patch keeps its own positional embedding, so an encoder that sees a shorter
        sequence still knows where every token sits on the grid."""
        grid = self.input_grid(fbank)
        b, m, k = mask_index.shape
        patches = self.patch_embed(fbank_to_image(fbank))  # (B, N, E)
        n, e = patches.shape[1:]
        hidden = torch.zeros(b, m, n, dtype=torch.bool, device=patches.device)
        hidden.scatter_(2, mask_index.to(patches.device, torch.long), True)
        hidden = hidden.flatten(0, 1)  # (B*M, N)
        patches = patches.repeat_interleave(m, dim=0)
        pos = self.positional_embedding(grid).to(patches.dtype)
        n_cls = self.config.num_class_tokens
        classes = self.class_tokens(b * m).to(patches.dtype)
        if not drop:
            x = torch.where(hidden.unsqueeze(-1), self.mask_embed.to(patches.dtype), patches)
            return torch.cat([classes, x], dim=1) + pos, None
        # visible ids in grid order: a stable sort puts the False (visible) entries first
        visible = torch.sort(hidden.to(torch.uint8), dim=1, stable=True).indices[:, : n - k]
        x = (patches + pos[:, n_cls:]).gather(1, visible.unsqueeze(-1).expand(-1, -1, e))
        return torch.cat([classes + pos[:, :n_cls], x], dim=1), visible

    # ----------------------------------------------------------------- forward modes
    def encode(self, fbank: torch.Tensor, return_layers: bool = False) -> EncoderOutput:
        tokens, grid = self.embed_tokens(fbank)
        out = self.encoder(tokens, return_layers=return_layers)
        out, layers = out if return_layers else (out, None)
        n_cls = self.config.num_class_tokens
        return EncoderOutput(out[:, n_cls:], out[:, :n_cls], grid, layers)

    def forward_features(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.encode(fbank).patch_tokens

    def pool(self, enc: EncoderOutput) -> torch.Tensor:
        """What the head reads (``config.pool``), (B, ``config.head_dim``)."""
        if self.config.pool == "cls":
            return enc.class_tokens.mean(dim=1)  # SSAST averages its cls and dist tokens
        if self.config.pool.startswith("bands"):  # token = f * t_dim + t: rows are bands
            rows = enc.patch_tokens.unflatten(1, enc.grid)  # (B, f_dim, t_dim, E)
            mean = rows.mean(dim=2)
            if self.config.pool == "bands":
                return mean.flatten(1)
            # sqrt(var + eps): the plain std has an infinite gradient where a row is constant
            std = (rows.var(dim=2, unbiased=False) + BANDS_STD_EPS).sqrt()
            return torch.cat([mean.flatten(1), std.flatten(1)], dim=1)
        return enc.patch_tokens.mean(dim=1)

    def pooled(self, fbank: torch.Tensor) -> torch.Tensor:
        """The head's input for ``fbank``: :meth:`pool` of :meth:`encode`."""
        return self.pool(self.encode(fbank))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(fbank)
        return pooled if self.mlp_head is None else self.mlp_head(pooled)

    def draw_mask(self, fbank, mask_patch=400, mode="cluster", rng=None) -> torch.Tensor:
        grid = self.input_grid(fbank)
        return draw_mask_index(fbank.shape[0], grid, mask_patch, mode, rng).to(fbank.device)

    def forward_pretrain(
        self,
        fbank: torch.Tensor,
        task: str = "mpc",
        mask_index: torch.Tensor | None = None,
        mask_patch: int = 400,
        mask_mode: str = "cluster",
        rng: random.Random | None = None,
    ):
        """Masked patch modelling: ``mpc`` -> (accuracy, InfoNCE), ``mpg`` -> MSE."""
        if not self.config.pretrain_heads:
            raise RuntimeError(
                "this model has no pretraining heads (built with pretrain_heads=False)"
            )
        if task not in ("mpc", "mpg"):
            raise ValueError(f"task must be 'mpc' or 'mpg', got {task!r}")
        if self.config.fstride != PATCH or self.config.tstride != PATCH:
            raise ValueError("masked patch pretraining needs non-overlapping patches (stride 16)")
        if mask_index is None:
            mask_index = self.draw_mask(fbank, mask_patch, mask_mode, rng)
        else:
            grid = self.input_grid(fbank)
            check_mask_size(grid[0] * grid[1], mask_index.shape[1])
            mask_index = mask_index.to(fbank.device, torch.long)
        targets = patchify(fbank).gather(1, mask_index.unsqueeze(-1).expand(-1, -1, PATCH * PATCH))
        tokens, _ = self.embed_tokens(fbank, mask_index)
        encoded = self.encoder(tokens)
        n_cls = self.config.num_class_tokens
        at_mask = encoded.gather(
            1, (mask_index + n_cls).unsqueeze(-1).expand(-1, -1, encoded.shape[-1])
        )
        if task == "mpc":
            return info_nce(targets, self.cpredlayer(at_mask))
        return masked_mse(self.gpredlayer(at_mask), targets)

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and the front end's settings to a folder."""
        return saving.save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides) -> AudioModel:
        """Load a :meth:`save_pretrained` folder; ``overrides`` change non-structural settings
        (strides, input length, number of classes: the positional embedding is resized)."""
        saved, state = saving.read_pretrained(folder)
        model = cls(saving.apply_overrides(saved, overrides, str(folder)))
        saving.load_weights(model, state, saved.grid, str(folder))
        return model.eval()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"config={json.dumps(self.config.__dict__)}"


def create_model(name: str, **overrides) -> AudioModel:
    """A model from a named preset (see ``list_models()``), e.g. ``create_model("ssamba_tiny")``."""
    return AudioModel(preset_config(name, **overrides))

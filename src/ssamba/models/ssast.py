"""The SSAST encoder: a DeiT-style ViT (pre-norm blocks, exact GELU, LayerNorm eps 1e-6)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.models.config import ModelConfig
from ssamba.models.layers import DropPath


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, explicit: bool = False):
        super().__init__()
        self.heads = heads
        self.explicit = explicit  # materialise the N x N matrix, as the reference code does
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.explicit:
            attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
            out = attn.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, drop_path: float, explicit: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, explicit)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViTEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        explicit = cfg.attention == "explicit"
        self.blocks = nn.ModuleList(
            ViTBlock(cfg.embed_dim, cfg.num_heads, rates[i], explicit) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, return_layers: bool = False):
        x, streams = tokens, []
        for block in self.blocks:
            x = block(x)
            if return_layers:
                streams.append(x)
        out = self.norm(x)
        return (out, streams) if return_layers else out

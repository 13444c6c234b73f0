"""The bidirectional Mamba mixer (Vision Mamba "v2") and its pre-norm block.

One input projection feeds two branches: a forward one and a backward one that runs on the
time-reversed sequence with its own conv/SSM parameters; their outputs are averaged.
Tensors stay in (batch, length, channels) layout throughout, which is what the CPU scan wants.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.models.layers import DropPath, make_norm
from ssamba.ops import selective_scan


def causal_depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
    """Causal depthwise conv along time in (B, L, D) layout; weight (D, 1, K), left pad K-1."""
    k = weight.shape[-1]
    length = x.shape[1]
    padded = F.pad(x, (0, 0, k - 1, 0))
    out = bias + padded[:, 0:length] * weight[:, 0, 0]
    for i in range(1, k):
        out = out + padded[:, i : i + length] * weight[:, 0, i]
    return out


class SSMBranch(nn.Module):
    """One direction: causal conv, input-dependent (dt, B, C), and the selective scan."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int):
        super().__init__()
        self.d_state, self.dt_rank = d_state, dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        u = F.silu(causal_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias))
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias is added inside the scan
        A = -torch.exp(self.A_log.float())
        return selective_scan(
            u, delta, A, B, C, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float()
        )


class BiMambaMixer(nn.Module):
    """Vision Mamba's bimamba "v2" mixer; parameter names match the official state_dict.

    The official code keeps the backward branch's parameters as ``conv1d_b``, ``x_proj_b``,
    ``dt_proj_b``, ``A_b_log`` and ``D_b`` on the mixer itself; the checkpoint loader maps them onto
    ``backward``'s submodule (see ssamba.checkpoints).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        bidirectional: bool = True,
    ):
        super().__init__()
        d_inner = expand * d_model
        dt_rank = dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.forward_branch = SSMBranch(d_inner, d_state, d_conv, dt_rank)
        self.backward_branch = (
            SSMBranch(d_inner, d_state, d_conv, dt_rank) if bidirectional else None
        )
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        y = self.forward_branch(x, z)
        if self.backward_branch is not None:
            y_back = self.backward_branch(x.flip(1), z.flip(1)).flip(1)
            y = (y + y_back) / 2
        return self.out_proj(y.to(hidden.dtype))


class MambaBlock(nn.Module):
    """Pre-norm block carrying a separate residual stream (mamba_ssm's Block, unfused add+norm)."""

    def __init__(self, dim: int, mixer: nn.Module, norm: str, drop_path: float, fp32: bool):
        super().__init__()
        self.mixer = mixer
        self.norm = make_norm(norm, dim, eps=1e-5)
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = fp32

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None):
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(hidden), residual


def init_mamba_branch(branch: SSMBranch, dt_min=1e-3, dt_max=1e-1, dt_floor=1e-4) -> None:
    """Mamba's initialisation: S4D-real A, D = 1, dt bias = softplus^-1 of log-uniform dt."""
    d_inner, d_state = branch.A_log.shape
    with torch.no_grad():
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        branch.A_log.copy_(torch.log(a))
        branch.D.fill_(1.0)
        std = branch.dt_rank**-0.5
        nn.init.uniform_(branch.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_floor)
        branch.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

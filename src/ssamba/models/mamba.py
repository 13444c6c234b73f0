"""The bidirectional Mamba mixer (Vision Mamba "v2") and its pre-norm block.

One input projection feeds two branches: a forward one and a backward one that runs on the
time-reversed sequence with its own conv/SSM parameters; their outputs are averaged.
Tensors stay in (batch, length, channels) layout throughout, which is what the scan kernels want.
Kernels are reached only through ``ssamba.ops`` (backend dispatch by device and SSAMBA_SCAN).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.models.layers import DropPath, make_norm
from ssamba.ops import (
    causal_depthwise_conv1d,
    conv1d_silu,
    conv1d_silu_pair,
    resolve_backend,
    selective_scan,
    selective_scan_many,
)


def _fast_path(t: torch.Tensor) -> bool:
    """Use the fused path (conv + silu kernels, reverse scans, mirrored layers without flipped
    copies) for ``t``? Whenever the scan backend for its device is not the plain reference
    (``SSAMBA_SCAN=reference`` gives the plain path of the official code)."""
    return resolve_backend(t.device) != "reference"


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

    def forward(self, x: torch.Tensor, z: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """The branch on (x, z); ``reverse``: on the time-reversed sequence, output reversed back
        (anti-causal conv and a scan from the end: no flipped copies)."""
        if _fast_path(x):
            u = conv1d_silu(x, self.conv1d.weight, self.conv1d.bias, reverse)
        else:
            conv = causal_depthwise_conv1d(x, self.conv1d.weight, self.conv1d.bias, reverse)
            u = F.silu(conv)
        return self._ssm(u, z, reverse)

    def _ssm(self, u: torch.Tensor, z: torch.Tensor, reverse: bool) -> torch.Tensor:
        args = self._scan_args(u, z)
        return selective_scan(*args[:8], reverse=reverse)

    def _scan_args(self, u: torch.Tensor, z: torch.Tensor):
        """selective_scan's (u, delta, A, B, C, D, z, delta_bias, delta_softplus) for ``u``."""
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # the bias is added inside the scan
        A = -torch.exp(self.A_log.float())
        return u, delta, A, B, C, self.D.float(), z, self.dt_proj.bias.float(), True


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

    def forward(self, hidden: torch.Tensor, mirrored: bool = False) -> torch.Tensor:
        """The mixer on ``hidden`` (B, L, E).

        ``mirrored=True`` returns ``forward(hidden.flip(1)).flip(1)`` (what the second layer of
        each SSAMBA pair needs) without flipping anything: the forward branch then runs
        anti-causally from the end and the backward branch causally from the start.
        With any scan backend but the reference (numba on CPU; mamba_ssm, Triton or the torch
        scan on CUDA; torch elsewhere) this uses the fused path (conv + silu kernels, reverse
        scans, on CPU both directions in one dispatch at inference); with
        ``SSAMBA_SCAN=reference``, the plain path (:meth:`reference_forward`)."""
        if not _fast_path(hidden):
            if mirrored:
                return self.reference_forward(hidden.flip(1)).flip(1)
            return self.reference_forward(hidden)
        xz = self.in_proj(hidden)
        x, z = xz.chunk(2, dim=-1)
        if self.backward_branch is None:
            return self.out_proj(self.forward_branch(x, z, mirrored).to(hidden.dtype))
        branches = (self.forward_branch, self.backward_branch)
        reverse = (mirrored, not mirrored)
        if torch.is_grad_enabled() and (
            hidden.requires_grad or any(p.requires_grad for p in self.parameters())
        ):
            y_f = self.forward_branch(x, z, reverse[0])
            y_b = self.backward_branch(x, z, reverse[1])
        else:
            y_f, y_b = self._inference_branches(x, z, branches, reverse)
        y = (y_f + y_b) / 2
        return self.out_proj(y.to(hidden.dtype))

    @staticmethod
    def _inference_branches(x, z, branches, reverse):
        """No autograd: both convs in one kernel dispatch, both scans in another (numba backend;
        one call each elsewhere)."""
        pairs = list(zip(branches, reverse, strict=True))
        convs = [(br.conv1d.weight, br.conv1d.bias, rev) for br, rev in pairs]
        us = conv1d_silu_pair(x, convs)
        z = z.contiguous()  # shared by both scans: one copy instead of one per scan
        scans = [(*br._scan_args(u, z), rev) for (br, rev), u in zip(pairs, us, strict=True)]
        return selective_scan_many(scans)

    def reference_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """The plain formulation of the official code (flipped copies for the backward branch,
        causal torch conv); the fast path is tested against it."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        fb = self.forward_branch
        y = fb._ssm(F.silu(causal_depthwise_conv1d(x, fb.conv1d.weight, fb.conv1d.bias)), z,
                    False)  # fmt: skip
        if self.backward_branch is not None:
            bb = self.backward_branch
            xb, zb = x.flip(1), z.flip(1)
            ub = F.silu(causal_depthwise_conv1d(xb, bb.conv1d.weight, bb.conv1d.bias))
            y_back = bb._ssm(ub, zb, False).flip(1)
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

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None, mirrored: bool = False):
        """``mirrored=True``: the block on the time-reversed streams, outputs reversed back (norm,
        residual and drop path act per token, so only the mixer needs to know)."""
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        if mirrored:
            return self.mixer(hidden, mirrored=True), residual
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

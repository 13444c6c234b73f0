"""The bidirectional Mamba mixer (Vision Mamba "v2") and its pre-norm block.

One input projection feeds two branches: a forward one and a backward one that runs on the
time-reversed sequence with its own conv/SSM parameters; their outputs are averaged.
Tensors stay in (batch, length, channels) layout throughout, which is what the scan kernels want.
Kernels are reached only through ``ssamba.ops`` (backend dispatch by device and SSAMBA_SCAN).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.models.layers import DropPath, make_norm
from ssamba.ops import (
    causal_depthwise_conv1d,
    conv1d_silu,
    conv1d_silu_pair,
    conv1d_silu_window,
    resolve_backend,
    selective_scan,
    selective_scan_many,
)

# Inference on the numba backend runs sequences of at least twice this many steps in pieces of
# at least this many (BiMambaMixer.infer): the layer's memory then grows with the length only
# through its input and output; shorter ones run whole, as fast as before (pieces cost a second
# input projection of most of the sequence and a second out_proj).
INFERENCE_CHUNK = 2048


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

    ``inference_chunk``: at inference on the numba backend, sequences of at least twice this many
    steps run in pieces of at least this many (:meth:`infer`); the class attribute is the
    default, an instance may set its own (the tests use tiny pieces).
    """

    inference_chunk = INFERENCE_CHUNK

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
        scans; without autograd :meth:`infer`); with ``SSAMBA_SCAN=reference``, the plain path
        (:meth:`reference_forward`)."""
        if not _fast_path(hidden):
            return self._reference(hidden, mirrored)
        if not (torch.is_grad_enabled() and (
            hidden.requires_grad or any(p.requires_grad for p in self.parameters())
        )):  # fmt: skip
            return self.infer(hidden, mirrored=mirrored)
        x, z = self._project(hidden)
        y = self.forward_branch(x, z, mirrored)
        if self.backward_branch is None:
            return self.out_proj(y.to(hidden.dtype))
        y_b = self.backward_branch(x, z, not mirrored)
        # The sum in place (the scans' backward does not need their outputs; mamba_ssm's may),
        # and the mean's 1/2 folded into out_proj's weight: exact, as a power of two.
        y = y.add_(y_b) if resolve_backend(x.device) != "cuda" else y + y_b
        del y_b
        return F.linear(y.to(hidden.dtype), self.out_proj.weight * 0.5)

    def _reference(self, hidden, mirrored):
        if mirrored:
            return self.reference_forward(hidden.flip(1)).flip(1)
        return self.reference_forward(hidden)

    def _project(self, hidden, rows_z=None):
        """x and z of the input projection as two products (z of the time steps ``rows_z`` only,
        when given): two contiguous tensors, so the scan reads z without a copy and the backward
        adds two input gradients instead of concatenating (B, L, 2 d_inner) of them."""
        w, bias = self.in_proj.weight, self.in_proj.bias
        e = w.shape[0] // 2
        bx, bz = (None, None) if bias is None else (bias[:e], bias[e:])
        hz = hidden if rows_z is None else hidden[:, rows_z]
        return F.linear(hidden, w[:e], bx), F.linear(hz, w[e:], bz)

    @torch.no_grad()
    def infer(self, source, norm=None, mirrored: bool = False, out=None) -> torch.Tensor:
        """No autograd: ``forward(norm(source), mirrored)``, added into ``out`` if given (and
        returned), else a new tensor. ``norm`` (per token, e.g. the block's pre-norm) or None.

        From twice ``inference_chunk`` steps on, on the numba backend, the layer runs over
        ``length // inference_chunk`` equal pieces (each of at least ``inference_chunk`` and
        under twice as many steps), each direction from its own end: the projection of a piece
        (with the K - 1 neighbours its conv reads), conv + silu, the scan from the state the
        previous piece left, and out_proj of the piece added into the output (linear:
        out_proj(y_f + y_b) / 2 is the sum of the pieces' halves). No (B, L, d_inner) tensor of
        the whole sequence exists, so the layer's memory beyond its input and output is a few
        pieces' worth. Shorter sequences (and other backends) run whole, as :meth:`forward`
        did before."""
        length = source.shape[1]
        if length < 2 * self.inference_chunk or not self._chunkable(source):
            hidden = source if norm is None else norm(source)
            if not _fast_path(hidden):
                y = self._reference(hidden, mirrored)
            else:
                y = self._infer_whole(hidden, mirrored)
            return y if out is None else out.add_(y)
        if out is None:
            out = source.new_zeros(*source.shape[:2], self.out_proj.weight.shape[0])
        return self._infer_pieces(source, norm, mirrored, out)

    def _chunkable(self, t: torch.Tensor) -> bool:
        """Pieces need the numba kernels (they carry the scan state): CPU float32/64."""
        return (
            resolve_backend(t.device) == "cpu"
            and t.dtype in (torch.float32, torch.float64)
            and self.in_proj.weight.dtype == t.dtype
        )

    def _infer_whole(self, hidden, mirrored):
        """The whole sequence at once: both convs in one kernel dispatch, both scans in another
        (numba backend; one call each elsewhere)."""
        x, z = self._project(hidden)
        if self.backward_branch is None:
            return self.out_proj(self.forward_branch(x, z, mirrored).to(hidden.dtype))
        pairs = ((self.forward_branch, mirrored), (self.backward_branch, not mirrored))
        convs = [(br.conv1d.weight, br.conv1d.bias, rev) for br, rev in pairs]
        us = conv1d_silu_pair(x, convs)
        del x
        scans = [(*br._scan_args(u, z), rev) for (br, rev), u in zip(pairs, us, strict=True)]
        del us
        y_f, y_b = selective_scan_many(scans)
        del scans
        y = y_f.add_(y_b)  # no autograd here: in place
        del y_b
        return F.linear(y.to(hidden.dtype), self.out_proj.weight * 0.5)

    def _infer_pieces(self, source, norm, mirrored, out):
        """:meth:`infer` in pieces. The causal direction runs first, from the start; the
        anti-causal one then from the end, beginning with the piece the first finished on
        (its projection and its first-direction output are kept for that). Each piece's
        tensors are dropped as soon as they are used, so that at most about four pieces'
        (B, piece, d_inner) tensors (seven where the directions meet) exist at a time."""
        length = source.shape[1]
        n_pieces = max(1, length // self.inference_chunk)
        passes = [(self.forward_branch, mirrored)]
        if self.backward_branch is not None:
            passes.append((self.backward_branch, not mirrored))
        passes.sort(key=lambda p: p[1])  # causal (False) first
        w_out = self.out_proj.weight * (0.5 if len(passes) == 2 else 1.0)
        cuts = [length * i // n_pieces for i in range(n_pieces + 1)]
        pieces = list(itertools.pairwise(cuts))
        kept = None
        for n_pass, (branch, rev) in enumerate(passes):
            state = None
            order = pieces[::-1] if rev else pieces
            for i, (t0, t1) in enumerate(order):
                meet = len(passes) == 2 and (n_pass, i) in ((0, len(order) - 1), (1, 0))
                keep = meet and n_pass == 0  # finish this piece in the second pass
                if meet and not keep:
                    x, z, offset, y_kept = kept
                    kept = None
                else:
                    x, z, offset = self._project_piece(source, norm, t0, t1)
                    y_kept = None
                u = conv1d_silu_window(x, branch.conv1d.weight, branch.conv1d.bias, rev, offset,
                                       t1 - t0)  # fmt: skip
                if not keep:
                    x = None
                (y,), (state,) = selective_scan_many([(*branch._scan_args(u, z), rev)],
                                                     states=[state])  # fmt: skip
                u = None
                if keep:
                    kept = (x, z, offset, y)
                    x = z = y = None
                    continue
                z = None
                if y_kept is not None:
                    y = y.add_(y_kept)
                    y_kept = None
                out[:, t0:t1].add_(F.linear(y, w_out))
                y = None
        return out

    def _project_piece(self, source, norm, t0, t1):
        """(x, z, offset) of steps [t0, t1): x with the K - 1 steps either side that a conv in
        either direction reads (the piece starts at ``offset`` in it), z of the piece only."""
        k = self.forward_branch.conv1d.weight.shape[-1]
        a, b = max(0, t0 - (k - 1)), min(source.shape[1], t1 + k - 1)
        h = source[:, a:b] if norm is None else norm(source[:, a:b])
        x, z = self._project(h, rows_z=slice(t0 - a, t1 - a))
        return x, z, t0 - a

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
        hidden = self.prenorm(residual)
        if self.residual_in_fp32:
            residual = residual.float()
        if mirrored:
            return self.mixer(hidden, mirrored=True), residual
        return self.mixer(hidden), residual

    def prenorm(self, residual: torch.Tensor) -> torch.Tensor:
        """The mixer's input: the norm of the residual stream (in the norm's dtype)."""
        return self.norm(residual.to(self.norm.weight.dtype))

    def mix_into(self, residual: torch.Tensor, out=None, mirrored: bool = False):
        """Inference: ``out += mixer(prenorm(residual))`` (a new tensor if ``out`` is None), the
        norm applied piece by piece where the mixer runs in pieces (:meth:`BiMambaMixer.infer`):
        no normalised copy of the whole stream."""
        return self.mixer.infer(residual, norm=self.prenorm, mirrored=mirrored, out=out)


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

"""Depthwise causal (or anti-causal) conv1d along time, fused with silu: a numba CPU kernel.

Layout (B, L, channels), the one the input projection produces; the input may be a channel slice
``[c0, c0 + D)`` of a wider contiguous (B, L, W) tensor (``x, z = in_proj(h).chunk(2, -1)``), so
no copy of ``x`` is made. With weight (D, 1, K) and bias (D,):

    causal       (reverse=False): pre[t] = bias + sum_i w[i] * x[t - (K - 1) + i]   (zero left pad)
    anti-causal  (reverse=True):  pre[t] = bias + sum_i w[i] * x[t + (K - 1) - i]   (zero right pad)
    out = silu(pre)  (or pre, without the activation)

The anti-causal form equals the causal conv of the time-reversed input, reversed back: it lets the
backward branch of the bidirectional mixer run without flipped copies. The backward of the conv
is again such a conv (of the gradient, in the other direction, without bias or activation), so
one kernel serves both passes; the weight gradient is a handful of torch reductions.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from ssamba.ops.scan_cpu import _KERNEL_FLAGS, _sigmoid, run_parallel

T_BLOCK = 64  # time steps per work item


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True, nogil=True)
def _conv_kernel(xf, length, width, c0, w_t, bias, rev, act, outf, pref, save_pre, j0, j1):
    """Work item = (batch row, block of T_BLOCK steps); x and out are flat (B*L*W), (B*L*D)."""
    k_size, n_chan = w_t.shape
    ntb = (length + T_BLOCK - 1) // T_BLOCK
    acc = np.empty(n_chan, w_t.dtype)
    for job in range(j0, j1):
        b = job // ntb
        t0 = (job % ntb) * T_BLOCK
        t1 = min(length, t0 + T_BLOCK)
        for t in range(t0, t1):
            for d in range(n_chan):
                acc[d] = bias[d]
            for i in range(k_size):
                s = t + (k_size - 1 - i) if rev else t - (k_size - 1) + i
                if s >= 0 and s < length:
                    off = np.uint64((b * length + s) * width + c0)
                    xr = xf[off : off + np.uint64(n_chan)]
                    wr = w_t[i]
                    for d in range(n_chan):
                        acc[d] += wr[d] * xr[d]
            o = np.uint64((b * length + t) * n_chan)
            orow = outf[o : o + np.uint64(n_chan)]
            if save_pre:
                prow = pref[o : o + np.uint64(n_chan)]
                for d in range(n_chan):
                    prow[d] = acc[d]
            if act:
                for d in range(n_chan):
                    v = acc[d]
                    orow[d] = v * _sigmoid(v)
            else:
                for d in range(n_chan):
                    orow[d] = acc[d]


def _conv_call(x_full, c0, n_chan, weight, bias, reverse, act, save_pre=False):
    """(kernel call, out, pre) for channels [c0, c0 + n_chan) of the contiguous (B, L, W) x_full."""
    nb, length, width = x_full.shape
    wd = x_full.dtype
    w_t = weight.detach().reshape(n_chan, -1).t().contiguous().to(wd)  # (K, D)
    b = bias.detach().to(wd).contiguous() if bias is not None else torch.zeros(n_chan, dtype=wd)
    out = torch.empty(nb, length, n_chan, dtype=wd)
    pre = torch.empty_like(out) if save_pre else torch.empty(1, dtype=wd)
    ntb = (length + T_BLOCK - 1) // T_BLOCK
    args = (x_full.detach().reshape(-1).numpy(), length, width, c0, w_t.numpy(), b.numpy(),
            bool(reverse), bool(act), out.reshape(-1).numpy(), pre.reshape(-1).numpy(),
            bool(save_pre))  # fmt: skip
    return (_conv_kernel, args, nb * ntb), out, pre


def _as_full(x: torch.Tensor):
    """(tensor, c0): ``x`` as the channel slice ``[c0, c0 + D)`` of a contiguous (B, L, W) tensor,
    without a copy when it is one (e.g. a ``chunk`` of the input projection's output)."""
    if x.is_contiguous():
        return x, 0
    base = x._base
    if (
        base is not None
        and base.dim() == 3
        and base.is_contiguous()
        and base.shape[:2] == x.shape[:2]
        and base.stride() == x.stride()
    ):
        c0 = x.storage_offset() - base.storage_offset()
        if 0 <= c0 and c0 + x.shape[2] <= base.shape[2]:
            return base, c0
    return x.contiguous(), 0


def _dweight(g, x, k_size, reverse):
    """d(weight) (D, 1, K): sum over batch and time of g[t] * x[t -+ shift]."""
    nb, length, n_chan = g.shape
    out = g.new_zeros(n_chan, 1, k_size)
    for i in range(k_size):
        shift = k_size - 1 - i
        if shift >= length:
            continue
        if reverse:  # g[t] * x[t + shift]
            prod = (g[:, : length - shift] * x[:, shift:]).sum((0, 1))
        else:  # g[t] * x[t - shift]
            prod = (g[:, shift:] * x[:, : length - shift]).sum((0, 1))
        out[:, 0, i] = prod
    return out


class _ConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        full, c0 = _as_full(x.detach())
        call, out, pre = _conv_call(full, c0, x.shape[2], weight, bias, reverse, True, True)
        run_parallel([call])
        ctx.save_for_backward(x, weight, pre)
        ctx.reverse = reverse
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, pre = ctx.saved_tensors
        sg = torch.sigmoid(pre)
        g = (dout * sg * (1 + pre * (1 - sg))).contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            call, dx, _ = _conv_call(g, 0, g.shape[2], weight, None, not ctx.reverse, False)
            run_parallel([call])
        if ctx.needs_input_grad[1]:
            dw = _dweight(g, x.detach(), weight.shape[-1], ctx.reverse).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum((0, 1))
        return dx, dw, db, None


def conv1d_silu_cpu(x, weight, bias, reverse=False):
    """silu(depthwise conv1d) along time of (B, L, D) ``x``, causal or (``reverse``) anti-causal."""
    if x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype:
        raise TypeError("conv1d_silu_cpu needs float32/float64 x and weight of the same dtype")
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        return _ConvSilu.apply(x, weight, bias, reverse)
    full, c0 = _as_full(x)
    call, out, _ = _conv_call(full, c0, x.shape[2], weight, bias, reverse, True)
    run_parallel([call])
    return out


def conv1d_silu_pair_cpu(x, branches):
    """Inference only: several (weight, bias, reverse) convs of the same ``x`` in one dispatch."""
    full, c0 = _as_full(x)
    calls, outs = [], []
    for weight, bias, reverse in branches:
        call, out, _ = _conv_call(full, c0, x.shape[2], weight, bias, reverse, True)
        calls.append(call)
        outs.append(out)
    run_parallel(calls)
    return outs

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
one kernel serves both passes; the weight and bias gradients come from one more kernel pass
(partial sums per work item). The forward saves no pre-activation: the backward recomputes it
in the kernel that applies silu's derivative.

For inference over a long sequence in pieces, :func:`conv1d_silu_window_cpu` computes the output
of one piece from the piece and the K - 1 neighbouring inputs its conv reads.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from ssamba.ops.cpu_threads import run_parallel
from ssamba.ops.kernel_entry import (
    HEADER,
    NativeKernel,
    failed,
    next_item,
    take1,
    take2,
    take3,
    take_bool,
    take_int,
)
from ssamba.ops.scan_cpu import _F1, _KERNEL_FLAGS, _sigmoid

T_BLOCK = 64  # time steps per work item
# What the kernel writes: the conv, silu(conv), or the gradient through silu of a given dout
# (the backward recomputes the pre-activation instead of keeping it from the forward).
CONV, SILU, SILU_GRAD = 0, 1, 2


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _tap_time(t, i, k_size, rev):
    """Input time that tap ``i`` reads for output time ``t``: causal, the K - 1 steps before t
    and t itself; anti-causal (``rev``), t and the K - 1 after it. The forward and the weight
    gradient must agree on it."""
    return t + (k_size - 1 - i) if rev else t - (k_size - 1) + i


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True, nogil=True)
def _conv_kernel(xf, in_len, width, c0, w_t, bias, rev, mode, gf, outf, out_len, offset,
                 j0, j1):  # fmt: skip
    """Work item = (batch row, block of T_BLOCK output steps); x and out are flat (B*in_len*W),
    (B*out_len*D). Output step t is the conv at input time t + offset (zero outside x); with
    ``mode`` SILU_GRAD it is gf[t] * silu'(pre[t]) (gf shaped like out)."""
    k_size, n_chan = w_t.shape
    ntb = (out_len + T_BLOCK - 1) // T_BLOCK
    acc = np.empty(n_chan, w_t.dtype)
    for job in range(j0, j1):
        b = job // ntb
        t0 = (job % ntb) * T_BLOCK
        t1 = min(out_len, t0 + T_BLOCK)
        for t in range(t0, t1):
            for d in range(n_chan):
                acc[d] = bias[d]
            tin = t + offset
            for i in range(k_size):
                s = _tap_time(tin, i, k_size, rev)
                if s >= 0 and s < in_len:
                    off = np.uint64((b * in_len + s) * width + c0)
                    xr = xf[off : off + np.uint64(n_chan)]
                    wr = w_t[i]
                    for d in range(n_chan):
                        acc[d] += wr[d] * xr[d]
            o = np.uint64((b * out_len + t) * n_chan)
            orow = outf[o : o + np.uint64(n_chan)]
            if mode == SILU:
                for d in range(n_chan):
                    v = acc[d]
                    orow[d] = v * _sigmoid(v)
            elif mode == SILU_GRAD:  # d silu(v) / dv = sg (1 + v (1 - sg))
                grow = gf[o : o + np.uint64(n_chan)]
                for d in range(n_chan):
                    v = acc[d]
                    sg = _sigmoid(v)
                    orow[d] = grow[d] * sg * (_F1 + v * (_F1 - sg))
            else:
                for d in range(n_chan):
                    orow[d] = acc[d]


@njit(cache=True)
def _conv_items(p, dt):
    """The conv's work items from a packed call (ssamba.ops.kernel_entry), one at a time."""
    xf, k = take1(p, HEADER, dt)
    in_len, k = take_int(p, k)
    width, k = take_int(p, k)
    c0, k = take_int(p, k)
    w_t, k = take2(p, k, dt)
    bias, k = take1(p, k, dt)
    rev, k = take_bool(p, k)
    mode, k = take_int(p, k)
    gf, k = take1(p, k, dt)
    outf, k = take1(p, k, dt)
    out_len, k = take_int(p, k)
    offset, k = take_int(p, k)
    j = next_item(p)
    while j >= 0:
        try:
            _conv_kernel(xf, in_len, width, c0, w_t, bias, rev, mode, gf, outf, out_len, offset,
                         j, j + 1)  # fmt: skip
        except Exception:  # noqa: BLE001 - no exception leaves a C entry: the caller raises
            failed(p)
        j = next_item(p)


def _conv_entry32(p):
    _conv_items(p, np.float32)


def _conv_entry64(p):
    _conv_items(p, np.float64)


CONV_KERNEL = NativeKernel(_conv_kernel, "1iii21bi11ii", {4: _conv_entry32, 8: _conv_entry64})


def _conv_call(x_full, c0, n_chan, weight, bias, reverse, mode, grad=None, window=None):
    """(kernel call, out) for channels [c0, c0 + n_chan) of the contiguous (B, L, W) x_full.

    ``window``: (offset, length): only output times [offset, offset + length) (default: all);
    ``grad``: the contiguous (B, length, n_chan) gradient that ``mode`` SILU_GRAD multiplies."""
    nb, in_len, width = x_full.shape
    offset, out_len = window if window is not None else (0, in_len)
    wd = x_full.dtype
    w_t = weight.detach().reshape(n_chan, -1).t().contiguous().to(wd)  # (K, D)
    b = bias.detach().to(wd).contiguous() if bias is not None else torch.zeros(n_chan, dtype=wd)
    out = torch.empty(nb, out_len, n_chan, dtype=wd)
    g = grad if grad is not None else torch.empty(1, dtype=wd)
    ntb = (out_len + T_BLOCK - 1) // T_BLOCK
    args = (x_full.detach(), in_len, width, c0, w_t, b, bool(reverse), mode, g.detach(), out,
            out_len, offset)  # fmt: skip
    return (CONV_KERNEL, args, nb * ntb), out


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


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True, nogil=True)
def _dweight_kernel(gf, xf, length, width, c0, k_size, rev, part, j0, j1):
    """Per work item (batch row, block of T_BLOCK steps): part[job, i] = sum over its steps of
    g[t] * x[t -+ (K - 1 - i)] (the weight gradient's share), part[job, K] = sum of g[t] (the
    bias'). g is flat (B*L*D), x a channel slice of the flat (B*L*W) input."""
    n_chan = part.shape[2]
    ntb = (length + T_BLOCK - 1) // T_BLOCK
    for job in range(j0, j1):
        b = job // ntb
        t0 = (job % ntb) * T_BLOCK
        acc = part[job]
        for t in range(t0, min(length, t0 + T_BLOCK)):
            go = np.uint64((b * length + t) * n_chan)
            grow = gf[go : go + np.uint64(n_chan)]
            brow = acc[k_size]
            for d in range(n_chan):
                brow[d] += grow[d]
            for i in range(k_size):
                s = _tap_time(t, i, k_size, rev)
                if s >= 0 and s < length:
                    off = np.uint64((b * length + s) * width + c0)
                    xr = xf[off : off + np.uint64(n_chan)]
                    arow = acc[i]
                    for d in range(n_chan):
                        arow[d] += grow[d] * xr[d]


@njit(cache=True)
def _dweight_items(p, dt):
    """The weight gradient's work items from a packed call, one at a time."""
    gf, k = take1(p, HEADER, dt)
    xf, k = take1(p, k, dt)
    length, k = take_int(p, k)
    width, k = take_int(p, k)
    c0, k = take_int(p, k)
    k_size, k = take_int(p, k)
    rev, k = take_bool(p, k)
    part, k = take3(p, k, dt)
    j = next_item(p)
    while j >= 0:
        try:
            _dweight_kernel(gf, xf, length, width, c0, k_size, rev, part, j, j + 1)
        except Exception:  # noqa: BLE001 - no exception leaves a C entry: the caller raises
            failed(p)
        j = next_item(p)


def _dweight_entry32(p):
    _dweight_items(p, np.float32)


def _dweight_entry64(p):
    _dweight_items(p, np.float64)


DWEIGHT_KERNEL = NativeKernel(
    _dweight_kernel, "11iiiib3", {4: _dweight_entry32, 8: _dweight_entry64}
)


def _dweight_dbias(g, x, k_size, reverse):
    """(d weight (D, 1, K), d bias (D,)) from the contiguous (B, L, D) gradient through silu:
    one pass over g and x, partial sums per work item (no (B, L, D) product per tap)."""
    nb, length, n_chan = g.shape
    full, c0 = _as_full(x)
    n_jobs = nb * ((length + T_BLOCK - 1) // T_BLOCK)
    part = torch.zeros(n_jobs, k_size + 1, n_chan, dtype=g.dtype)
    args = (g, full.detach(), length, full.shape[2], c0, k_size, bool(reverse), part)
    run_parallel([(DWEIGHT_KERNEL, args, n_jobs)])
    total = part.sum(0)
    return total[:k_size].t().reshape(n_chan, 1, k_size), total[k_size]


class _ConvSilu(torch.autograd.Function):
    """Saves only x (a view of the input projection's output, kept anyway) and the weights: the
    backward recomputes the pre-activation inside the kernel that applies silu's derivative,
    instead of the forward storing a (B, L, D) pre-activation per branch."""

    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        full, c0 = _as_full(x.detach())
        call, out = _conv_call(full, c0, x.shape[2], weight, bias, reverse, SILU)
        run_parallel([call])
        ctx.save_for_backward(x, weight, bias)
        ctx.reverse = reverse
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        full, c0 = _as_full(x.detach())
        dout = dout.detach().to(x.dtype).contiguous()
        call, g = _conv_call(full, c0, x.shape[2], weight, bias, ctx.reverse, SILU_GRAD, dout)
        run_parallel([call])
        del dout
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            call, dx = _conv_call(g, 0, g.shape[2], weight, None, not ctx.reverse, CONV)
            run_parallel([call])
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dw, db = _dweight_dbias(g, x.detach(), weight.shape[-1], ctx.reverse)
            dw = dw.to(weight.dtype) if ctx.needs_input_grad[1] else None
            db = db.to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None


def conv1d_silu_cpu(x, weight, bias, reverse=False):
    """silu(depthwise conv1d) along time of (B, L, D) ``x``, causal or (``reverse``) anti-causal."""
    _check_dtypes(x, weight)
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        return _ConvSilu.apply(x, weight, bias, reverse)
    full, c0 = _as_full(x)
    call, out = _conv_call(full, c0, x.shape[2], weight, bias, reverse, SILU)
    run_parallel([call])
    return out


def conv1d_silu_window_cpu(x, weight, bias, reverse, offset, length):
    """Inference: silu(conv) of ``x`` (B, L_in, D) at times [offset, offset + length) only, x
    being zero outside: a piece of a longer sequence, given with the K - 1 neighbours its conv
    reads on one side (before it if causal, after it if ``reverse``), so that the piece's
    output is that of the whole sequence. No autograd."""
    _check_dtypes(x, weight)
    if not 0 <= offset <= offset + length <= x.shape[1]:
        raise ValueError(f"window [{offset}, {offset + length}) outside {x.shape[1]} steps")
    full, c0 = _as_full(x)
    call, out = _conv_call(full, c0, x.shape[2], weight, bias, reverse, SILU, None,
                           (offset, length))  # fmt: skip
    run_parallel([call])
    return out


def _check_dtypes(x, weight) -> None:
    if x.dtype not in (torch.float32, torch.float64) or weight.dtype != x.dtype:
        raise TypeError("the numba conv needs float32/float64 x and weight of the same dtype")


def conv1d_silu_pair_cpu(x, branches):
    """Inference only: several (weight, bias, reverse) convs of the same ``x`` in one dispatch."""
    full, c0 = _as_full(x)
    calls, outs = [], []
    for weight, bias, reverse in branches:
        call, out = _conv_call(full, c0, x.shape[2], weight, bias, reverse, SILU)
        calls.append(call)
        outs.append(out)
    run_parallel(calls)
    return outs

"""Fused depthwise conv1d + silu along time as a Triton kernel (beside the scan's, which is in
ops/scan_triton.py; the same devices: CUDA, or CPU tensors in Triton's interpreter).

One program per (batch, time block, channel block): K shifted loads, bias, silu. A kernel of our
own because it reads ``x`` straight out of the input projection in (B, L, D) layout (a channel
slice is read in place); cuDNN's conv1d would need (B, D, L) copies in and out. The anti-causal
form reads x[t + K - 1 - i] (no flips). Its backward is the same kernel in the other direction
(no bias/activation) plus torch reductions for the weight gradient.

Importing this module needs the ``triton`` package.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssamba.ops.shapes import last_dim_contiguous

CONV_BLOCK_T = 32
CONV_BLOCK_D = 64


@triton.jit
def _conv_fwd(
    x_ptr, w_ptr, bias_ptr, out_ptr, pre_ptr, L, DCH, K, s_xb, s_xl,
    HAS_BIAS: tl.constexpr, REVERSE: tl.constexpr, ACT: tl.constexpr, SAVE_PRE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """out[t] = act(bias + sum_i w[i] x[t - (K-1) + i])  (REVERSE: x[t + (K-1) - i]).

    w is (K, D) contiguous; out and pre are contiguous (B, L, D)."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DCH
    acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    for i in range(0, K):
        src = offs_t + (K - 1 - i) if REVERSE else offs_t - (K - 1) + i
        m = ((src >= 0) & (src < L))[:, None] & mask_d[None, :]
        xv = tl.load(x_ptr + pid_b * s_xb + src[:, None] * s_xl + offs_d[None, :], mask=m,
                     other=0.0)  # fmt: skip
        wv = tl.load(w_ptr + i * DCH + offs_d, mask=mask_d, other=0.0)
        acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    m_out = (offs_t < L)[:, None] & mask_d[None, :]
    o = pid_b * L * DCH + offs_t[:, None] * DCH + offs_d[None, :]
    if SAVE_PRE:
        tl.store(pre_ptr + o, acc.to(pre_ptr.dtype.element_ty), mask=m_out)
    if ACT:
        acc = acc * tl.sigmoid(acc)
    tl.store(out_ptr + o, acc.to(out_ptr.dtype.element_ty), mask=m_out)


def _conv_launch(x, weight, bias, reverse, act, save_pre):
    nb, length, n_chan = x.shape
    k = weight.shape[-1]
    w_t = weight.detach().reshape(n_chan, k).t().contiguous()  # (K, D)
    out = torch.empty(nb, length, n_chan, dtype=x.dtype, device=x.device)
    pre = torch.empty_like(out) if save_pre else out
    if length > 0 and n_chan > 0:
        grid = (nb, triton.cdiv(length, CONV_BLOCK_T), triton.cdiv(n_chan, CONV_BLOCK_D))
        b = bias.detach().contiguous() if bias is not None else w_t
        _conv_fwd[grid](
            x, w_t, b, out, pre, length, n_chan, k, x.stride(0), x.stride(1),
            HAS_BIAS=bias is not None, REVERSE=bool(reverse), ACT=bool(act),
            SAVE_PRE=bool(save_pre), BLOCK_T=CONV_BLOCK_T, BLOCK_D=CONV_BLOCK_D,
        )  # fmt: skip
    return out, pre


def _dweight(g, x, k_size, reverse):
    """d(weight) (D, 1, K): sum over batch and time of g[t] * x[t -+ shift] (fp32 sums)."""
    nb, length, n_chan = g.shape
    out = torch.zeros(n_chan, 1, k_size, dtype=torch.float32, device=g.device)
    g, x = g.float(), x.float()
    for i in range(k_size):
        shift = k_size - 1 - i
        if shift >= length:
            continue
        if reverse:
            out[:, 0, i] = (g[:, : length - shift] * x[:, shift:]).sum((0, 1))
        else:
            out[:, 0, i] = (g[:, shift:] * x[:, : length - shift]).sum((0, 1))
    return out


class _ConvSiluTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, reverse):
        xd = last_dim_contiguous(x.detach())
        out, pre = _conv_launch(xd, weight, bias, reverse, True, True)
        ctx.save_for_backward(xd, weight, pre)
        ctx.reverse, ctx.has_bias = reverse, bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, pre = ctx.saved_tensors
        p = pre.float()
        sg = torch.sigmoid(p)
        g = dout.float() * sg * (1 + p * (1 - sg))
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            # the transpose of a causal conv is the anti-causal one with the same taps
            dx, _ = _conv_launch(g.contiguous(), weight, None, not ctx.reverse, False, False)
            dx = dx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            dw = _dweight(g, x, weight.shape[-1], ctx.reverse).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = g.sum((0, 1)).to(ctx.bias_dtype)
        return dx, dw, db, None


def conv1d_silu_triton(x, weight, bias, reverse=False):
    """silu(depthwise conv1d) along time of (B, L, D) ``x`` (weight (D, 1, K), bias (D,)),
    causal or (``reverse``) anti-causal, by a Triton kernel; output in x's dtype."""
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    ):
        return _ConvSiluTriton.apply(x, weight, bias, reverse)
    return _conv_launch(last_dim_contiguous(x), weight, bias, reverse, True, False)[0]

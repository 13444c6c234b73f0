"""Depthwise causal / anti-causal conv1d along time fused with silu: one entry, backend dispatch.

Layout (B, L, D), weight (D, 1, K), bias (D,):

    causal       (reverse=False): pre[t] = bias + sum_i w[i] x[t - (K - 1) + i]   (zero left pad)
    anti-causal  (reverse=True):  pre[t] = bias + sum_i w[i] x[t + (K - 1) - i]   (zero right pad)
    out = silu(pre)

The anti-causal form is the causal conv of the time-reversed input, reversed back, computed
without flips. :func:`conv1d_silu_window` gives the output of one piece of a long sequence (for
inference in pieces). Which implementation runs follows the scan backend that
:func:`ssamba.ops.scan.resolve_backend` picks for the tensors' device (the mixer runs conv and scan
on the same backend): ``cpu``: the numba kernel (ops/conv_cpu.py); ``triton`` and ``cuda``: the
Triton kernel (ops/conv_triton.py) where Triton runs on the device, else the torch form; ``torch``:
cuDNN / ATen ``F.conv1d`` on a (B, D, L) view, the anti-causal case by reversing the K taps (a
copy of K weights, not of the activations); ``reference``: the shift-and-add formulation below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssamba.ops.scan import _unavailable, resolve_backend


def causal_depthwise_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, reverse: bool = False
):
    """Causal depthwise conv along time in (B, L, D) layout; weight (D, 1, K), left pad K-1.

    ``reverse``: the anti-causal conv (right pad), i.e. the causal conv of ``x.flip(1)``, flipped
    back. The plain reference (no activation) the fused kernels are tested against."""
    k = weight.shape[-1]
    length = x.shape[1]
    if reverse:
        padded = F.pad(x, (0, 0, 0, k - 1))
        out = bias + padded[:, k - 1 : k - 1 + length] * weight[:, 0, 0]
        for i in range(1, k):
            out = out + padded[:, k - 1 - i : k - 1 - i + length] * weight[:, 0, i]
        return out
    padded = F.pad(x, (0, 0, k - 1, 0))
    out = bias + padded[:, 0:length] * weight[:, 0, 0]
    for i in range(1, k):
        out = out + padded[:, i : i + length] * weight[:, 0, i]
    return out


def conv1d_silu_torch(x, weight, bias, reverse=False):
    """silu(conv) by ``F.conv1d`` (cuDNN on CUDA) on the (B, D, L) view; output (B, L, D)."""
    k = weight.shape[-1]
    length = x.shape[1]
    xt = x.transpose(1, 2)
    if reverse:  # pre[t] = sum_j w[K-1-j] x[t + j]: correlation with the reversed taps
        pre = F.conv1d(xt, weight.flip(-1), bias, padding=k - 1, groups=x.shape[2])
        pre = pre[..., k - 1 : k - 1 + length]
    else:
        pre = F.conv1d(xt, weight, bias, padding=k - 1, groups=x.shape[2])[..., :length]
    return F.silu(pre).transpose(1, 2)


def _numba_ok(x, weight) -> bool:
    return x.dtype in (torch.float32, torch.float64) and weight.dtype == x.dtype


def _triton_ok(x) -> bool:
    return x.dtype != torch.float64 and _unavailable("triton", x.device) is None


def conv1d_silu(x, weight, bias, reverse=False, backend=None):
    """silu(depthwise conv1d) of (B, L, D) ``x``, causal or (``reverse``) anti-causal, on the
    backend of the scan for x's device (or ``backend``); autograd works on every path."""
    name = resolve_backend(x.device, backend)
    if name == "cpu" and _numba_ok(x, weight):
        from ssamba.ops.conv_cpu import conv1d_silu_cpu

        return conv1d_silu_cpu(x, weight, bias, reverse)
    if name in ("triton", "cuda") and _triton_ok(x):
        from ssamba.ops.conv_triton import conv1d_silu_triton

        return conv1d_silu_triton(x, weight, bias, reverse)
    if name == "reference":
        return F.silu(causal_depthwise_conv1d(x, weight, bias, reverse))
    return conv1d_silu_torch(x, weight, bias, reverse)


def conv1d_silu_pair(x, branches, backend=None):
    """Several ``(weight, bias, reverse)`` convs of the same ``x``: on the numba backend without
    autograd in one parallel dispatch, otherwise one call each."""
    branches = list(branches)
    name = resolve_backend(x.device, backend)
    tracked = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for br in branches for t in (x, br[0], br[1])
    )
    if name == "cpu" and not tracked and all(_numba_ok(x, w) for w, _, _ in branches):
        from ssamba.ops.conv_cpu import conv1d_silu_pair_cpu

        return conv1d_silu_pair_cpu(x, branches)
    return [conv1d_silu(x, w, b, rev, backend=name) for w, b, rev in branches]


def conv1d_silu_window(x, weight, bias, reverse, offset, length, backend=None):
    """Inference: silu(conv) of ``x`` (B, L_in, D) at times [offset, offset + length), x being
    zero outside: the output of a piece of a longer sequence, computed from the piece and the
    K - 1 neighbouring inputs its conv reads (before it if causal, after it if ``reverse``).
    The numba kernel computes only the window; elsewhere the whole of ``x``, then a slice."""
    name = resolve_backend(x.device, backend)
    if name == "cpu" and _numba_ok(x, weight):
        from ssamba.ops.conv_cpu import conv1d_silu_window_cpu

        return conv1d_silu_window_cpu(x, weight, bias, reverse, offset, length)
    out = conv1d_silu(x, weight, bias, reverse, backend=name)
    return out[:, offset : offset + length]

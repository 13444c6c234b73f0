"""Selective scan as a chunked parallel scan in plain torch: any device (MPS, XPU, CUDA without
Triton), differentiable by autograd, a Python loop over the CHUNK steps of a chunk, not over L.

Same contract and layout as :func:`ssamba.ops.scan.selective_scan_ref`. The recurrence
``s_t = a_t s_{t-1} + b_t`` with a_t = exp(dt_t A), b_t = dt_t u_t B_t is a scan of the
associative operator (a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2):

1. The time axis is cut into chunks of ``CHUNK`` steps, shape (batch, n_chunks, CHUNK, D, N).
2. Within the chunks, all chunks at once, one step at a time (CHUNK Python steps, not L): each
   step's state from a zero start at the chunk start, and the product of the decays since then.
3. The chunks' end states are scanned along the chunk axis by Hillis-Steele doubling
   (log2(n_chunks) levels of ``b[c] += a[c] b[c-k]; a[c] *= a[c-k]`` on (batch, n_chunks, D, N)
   tensors), shifted by one chunk: the state entering each chunk.
4. ``s = s_local + decay_since_chunk_start * s_entering``, then y = C . s + D u and the gate.

Numerical stability: every factor is a product of decays a_t = exp(dt_t A) with dt_t A <= 0, i.e.
a number in [0, 1], formed by multiplication; no exponential of a cumulative sum (let alone a
positive one) is taken, so nothing can overflow, and long products underflow to 0, which is the
correct limit. (The closed form exp(cumsum) * cumsum(exp(-cumsum) b) overflows within a few
hundred steps.)

``reverse=True`` runs the same steps and levels in the other direction along the axis, with no
flipped copies of the inputs.

Cost: work and memory O(L D N) (a handful of (batch, L, D, N) tensors kept for autograd; chunk
summaries add O(L D N / CHUNK * log2(n_chunks))); never O(L^2). The steps go through ``unbind``
(one stack in the backward) rather than indexing, whose backward writes a full-size zero tensor
per step. Computes in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 32  # steps per chunk: Python steps per call (16-64 measured alike on the CPU)


def _linear_scan(a: torch.Tensor, b: torch.Tensor, dim: int, reverse: bool):
    """Inclusive scan of s_t = a_t s_{t-1} + b_t along ``dim`` (from the end if ``reverse``),
    starting from zero: returns (prod of a since the start, s). Hillis-Steele doubling:
    log2(n) levels of whole-tensor operations."""
    n = a.shape[dim]
    k = 1
    while k < n:
        # "near" = the k elements that have no partner at distance k in the scan direction
        if reverse:
            near_a, far_a = a.narrow(dim, n - k, k), a.narrow(dim, 0, n - k)
            near_b, far_b = b.narrow(dim, n - k, k), b.narrow(dim, 0, n - k)
            part_a, part_b = a.narrow(dim, k, n - k), b.narrow(dim, k, n - k)
            b = torch.cat([far_b + far_a * part_b, near_b], dim)
            a = torch.cat([far_a * part_a, near_a], dim)
        else:
            near_a, far_a = a.narrow(dim, 0, k), a.narrow(dim, k, n - k)
            near_b, far_b = b.narrow(dim, 0, k), b.narrow(dim, k, n - k)
            part_a, part_b = a.narrow(dim, 0, n - k), b.narrow(dim, 0, n - k)
            b = torch.cat([near_b, far_b + far_a * part_b], dim)
            a = torch.cat([near_a, far_a * part_a], dim)
        k *= 2
    return a, b


def _chunk_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool):
    """(prod of a since the chunk start, state from a zero start) for every step of every chunk,
    a and b shaped (batch, chunks, steps, D, N): one step at a time, all chunks at once."""
    size = a.shape[2]
    order = range(size - 1, -1, -1) if reverse else range(size)
    acc_a, acc_s = [None] * size, [None] * size
    # unbind, not a[:, :, i]: the backward of unbind is one stack, while each indexing's
    # backward would write a zero-filled tensor of a's full size (O(steps^2) memory traffic)
    a_steps, b_steps = a.unbind(2), b.unbind(2)
    prod = state = None
    for i in order:
        ai, bi = a_steps[i], b_steps[i]
        prod = ai if prod is None else prod * ai
        state = bi if state is None else ai * state + bi
        acc_a[i], acc_s[i] = prod, state
    return torch.stack(acc_a, 2), torch.stack(acc_s, 2)


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                         delta_softplus=True, reverse=False, chunk=None):  # fmt: skip
    """Chunked parallel selective scan (see the module docstring); output in u's dtype."""
    dtype_out = u.dtype
    work = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    nb, length, n_chan = u.shape
    if length == 0:
        return u.new_zeros(u.shape).to(dtype_out)
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)
    if delta_softplus:
        delta = F.softplus(delta)
    size = min(chunk or CHUNK, length)
    n_chunks = -(-length // size)
    pad = n_chunks * size - length
    a = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, d, n), in [0, 1]
    b = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
    if pad:
        # padded steps come last in memory: b = 0 there keeps a reverse scan's state at zero
        # until the real steps; a forward scan never reads them back
        a = F.pad(a, (0, 0, 0, 0, 0, pad), value=1.0)
        b = F.pad(b, (0, 0, 0, 0, 0, pad))
    shape = (nb, n_chunks, size, n_chan, A.shape[1])
    a_loc, s_loc = _chunk_scan(a.view(shape), b.view(shape), reverse)
    edge = 0 if reverse else size - 1  # the last step of each chunk in scan order
    _, s_end = _linear_scan(a_loc[:, :, edge], s_loc[:, :, edge], 1, reverse)
    zero = torch.zeros_like(s_end[:, :1])
    if reverse:  # the state entering chunk c is the one leaving chunk c + 1
        s_in = torch.cat([s_end[:, 1:], zero], 1)
    else:
        s_in = torch.cat([zero, s_end[:, :-1]], 1)
    states = (s_loc + a_loc * s_in.unsqueeze(2)).reshape(nb, n_chunks * size, n_chan, -1)
    y = torch.einsum("bldn,bln->bld", states[:, :length], C)
    if D is not None:
        y = y + u * D.to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype_out)

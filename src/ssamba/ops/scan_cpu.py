"""Fused selective scan for the CPU: numba kernels for the forward and the backward.

Layout and semantics are those of :mod:`ssamba.ops.scan` (u, delta, z: (batch, L, D); B, C:
(batch, L, N); A: (D, N)). How the kernels are made fast (measured on this machine class, see
docs/scan.md):

* Forward work item = (batch row, block of ``LANES`` channels). The ``(N, LANES)`` state tile
  lives in L1 and the innermost loop runs over the channels of the block, so LLVM vectorises it
  and ``y`` needs no horizontal sum. Work items are spread over torch's threads by
  :func:`ssamba.ops.cpu_threads.run_parallel`.
* numba leaves LLVM's SLP vectoriser off: a channel loop of constant trip count with a small body
  is fully unrolled into scalar code before the loop vectoriser sees it. The backward's blocks
  are therefore ``BWD_LANES`` = 32 channels wide (its small loops stay loops and vectorise; 5x
  faster than at 16), the exp-bound forward keeps 16.
* ``exp`` in float32 is a branch-free polynomial (``_exp32``) that LLVM can vectorise; the scalar
  libm call numba emits for ``math.exp`` is 3-5x slower. Its integer part stays int32 (numba
  widens int arithmetic to int64, whose conversion to float is scalar without AVX-512). float64
  keeps the exact ``math.exp`` (the polynomial is not accurate enough for gradcheck); the same
  kernel source serves both dtypes through the ``_exp``/``_softplus``/``_sigmoid`` overloads.
* Inner loops index 1-D row views (``row[c]``), never ``x[b, t, d0 + c]``: the latter made LLVM
  emit gathers.
* The forward saves the state every ``CHUNK`` steps (never a (batch, L, D, N) tensor), and not
  the pre-gate output ``ypre``. Backward work item = (batch row, group of ``GROUP`` blocks), run
  chunk by chunk from the end, all blocks of the group inside a chunk, so that the chunk's rows
  of every (batch, L, D) array are used while in cache and B, C are read once per group. Per
  chunk and block: one elementwise pass (softplus and its derivative from one exp, the gate's
  dy and dz factor), then per state row the states are recomputed into an L1-sized plane and the
  adjoint recurrence runs back through them (rebuilding ``ypre`` on the way), then one pass
  writes du, d(delta), dz.
* d(B) and d(C) are sums over channels: summed over the blocks of a group inside the kernel, one
  partial per group (fixed by the shape, not the thread count, so results do not depend on it),
  added up by torch (no races, no atomics).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ssamba.ops.cpu_threads import run_parallel
from ssamba.ops.kernel_entry import (
    HEADER,
    NativeKernel,
    failed,
    next_item,
    take1,
    take2,
    take3,
    take4,
    take_bool,
    take_int,
)
from ssamba.ops.shapes import check_scan_shapes

LANES = 16  # channels per work item: one (N x 16) fp32 tile = 1 KiB for N = 16
CHUNK = 64  # steps between saved states; the backward keeps (CHUNK + 1) states of one tile row
# The backward's channel blocks are wider: numba leaves LLVM's SLP vectoriser off, so a 16-lane
# loop with a small body is fully unrolled into scalar code, while a 32-lane one still reaches the
# loop vectoriser (measured 5x faster on its small loops, the same on the exp-bound ones).
BWD_LANES = 32
GROUP = 4  # backward channel blocks per work item (fixed: results must not depend on threads)
# planes of the backward's per-block scratch, (_W_PLANES, CHUNK + 1, BWD_LANES)
_W_U, _W_DT, _W_DU, _W_SPG, _W_DY, _W_GZ, _W_Y, _W_DDT, _W_HB, _W_ST, _W_DEC, _W_H, _W_HD = range(
    13
)
_W_PLANES = 13

# Fast-math flags. Reassociation lets LLVM vectorise the reductions over channels; we leave out
# nnan/ninf so that comparisons (softplus threshold, exp clamping) keep their IEEE meaning.
_KERNEL_FLAGS = {"reassoc", "contract", "nsz", "arcp"}
# The exp/log polynomials must not be reassociated (Cody-Waite reduction relies on evaluation
# order), so their own instructions only get contraction into fma.
_POLY_FLAGS = {"contract", "nsz"}
# error_model="numpy": a float division by zero gives inf instead of raising, so numba emits no
# exception branch, which would stop inlining and vectorisation (softplus and sigmoid divide).
_POLY_JIT = {"fastmath": _POLY_FLAGS, "error_model": "numpy"}

# float32 constants: a bare Python float literal would promote float32 arithmetic to float64.
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_SOFTPLUS_THRESHOLD = np.float32(20.0)  # torch's: softplus(x) = x above it
_EXP_LO = np.float32(-87.33)  # exp(x) below ~1.2e-38 is treated as 1.2e-38 (2^-126)
_EXP_HI = np.float32(88.72)
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # ln 2 split in two so that k * _LN2_HI is exact
_LN2_LO = np.float32(-2.12194440e-4)
_EXP_SHIFT = np.float32(128.5)  # + 0.5 rounds to nearest; + 128 makes int() truncation a floor
_EXP_BIAS = np.float32(128.0)
_EXP_P = tuple(
    np.float32(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
              1.6666665459e-1, 5.0000001201e-1)
)  # fmt: skip
# log1p(e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3] for e in [0, 1]: odd series up to s^17.
_ATANH_P = tuple(np.float32(1.0 / k) for k in (17, 15, 13, 11, 9, 7, 5, 3))


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret int32 bits as a float32 (vectorisable, unlike a libm ldexp call)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(fastmath=_POLY_FLAGS, error_model="numpy", cache=True)
def _exp32(x):
    """exp for float32, branch-free: 2^k * P(r), x = k ln2 + r, |r| <= ln2/2; ~2e-7 relative."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    # k + 128 stays an int32 and k is taken in float: numba widens int32 arithmetic to int64, and
    # without AVX-512 an int64 -> float conversion is scalar code (it halved the speed on AVX2)
    kb = np.int32(x * _LOG2E + _EXP_SHIFT)
    kf = np.float32(kb) - _EXP_BIAS
    r = x - kf * _LN2_HI
    r = r - kf * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_P
    p = p0 * r + p1
    p = p * r + p2
    p = p * r + p3
    p = p * r + p4
    p = p * r + p5
    p = p * r * r + r + _F1
    return p * _int32_bits_as_float32(np.int32(kb - np.int32(1)) << np.int32(23))  # 2^k


@njit(fastmath=_POLY_FLAGS, error_model="numpy", cache=True)
def _log1p_unit32(e):
    """log1p(e) for float32 e in [0, 1] by the atanh series (no division by tiny numbers)."""
    s = e / (_F2 + e)
    s2 = s * s
    p17, p15, p13, p11, p9, p7, p5, p3 = _ATANH_P  # unrolled: a loop over a tuple blocks SIMD
    q = p17 * s2 + p15
    q = q * s2 + p13
    q = q * s2 + p11
    q = q * s2 + p9
    q = q * s2 + p7
    q = q * s2 + p5
    q = q * s2 + p3
    return _F2 * s * (q * s2 + _F1)


def _exp(x):
    return math.exp(x)


def _softplus(x):
    return x if x > 20.0 else math.log1p(math.exp(x))


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(_exp, jit_options=_POLY_JIT)
def _exp_impl(x):
    if _is_f32(x):
        return lambda x: _exp32(x)
    return lambda x: math.exp(x)


@overload(_softplus, jit_options=_POLY_JIT)
def _softplus_impl(x):
    """softplus with torch's threshold; float32: max(x, 0) + log1p(exp(-|x|)), all polynomial."""
    if _is_f32(x):

        def sp32(x):
            v = max(x, _F0) + _log1p_unit32(_exp32(-abs(x)))
            return x if x > _SOFTPLUS_THRESHOLD else v

        return sp32
    return lambda x: x if x > 20.0 else math.log1p(math.exp(x))


@overload(_sigmoid, jit_options=_POLY_JIT)
def _sigmoid_impl(x):
    """1 / (1 + exp(-x)) without overflow: e = exp(-|x|) <= 1 in both branches."""
    if _is_f32(x):

        def sig32(x):
            e = _exp32(-abs(x))
            p = _F1 / (_F1 + e)
            return p if x >= _F0 else e * p

        return sig32

    def sig64(x):
        e = math.exp(-abs(x))
        p = 1.0 / (1.0 + e)
        return p if x >= 0.0 else e * p

    return sig64


def _softplus_sigmoid(x):
    return _softplus(x), (1.0 if x > 20.0 else _sigmoid(x))


@overload(_softplus_sigmoid, jit_options=_POLY_JIT)
def _softplus_sigmoid_impl(x):
    """(softplus(x), its derivative) with torch's threshold; float32: one exp(-|x|) serves both
    (the value is ``_softplus``'s, operation for operation)."""
    if _is_f32(x):

        def sps32(x):
            e = _exp32(-abs(x))
            v = max(x, _F0) + _log1p_unit32(e)
            p = _F1 / (_F1 + e)
            g = p if x >= _F0 else e * p
            big = x > _SOFTPLUS_THRESHOLD
            return (x if big else v), (_F1 if big else g)

        return sps32

    def sps64(x):
        big = x > 20.0
        return (x if big else math.log1p(math.exp(x))), (1.0 if big else _sigmoid(x))

    return sps64


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _block(job, nblk, n_chan, lanes):
    """Batch row, first channel and width of work item ``job`` (the last block may be narrow)."""
    b = job // nblk
    d0 = (job % nblk) * lanes
    return b, d0, min(lanes, n_chan - d0)


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _tm(t, length, rev):
    """Memory time index of scan step ``t``: t, or L - 1 - t for a reverse scan."""
    return length - 1 - t if rev else t


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _row(b, t, length, n_chan, d0):
    """Flat offset of x[b, t, d0] in a (batch, L, D) array, unsigned: numba then skips the
    negative-index fix-up that otherwise turns contiguous loads into gathers."""
    return np.uint64((b * length + t) * n_chan + d0)


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _stage_chunk(uf, df, bm, cm, bias, softplus, rev, b, t0, steps, n_chan, d0, w,
                 ub, dtb, dub, bt, ct):  # fmt: skip
    """Copy one chunk of one channel block into local buffers: u, dt = softplus(delta + bias),
    dt * u as (steps, w) and B, C transposed to (N, steps) (the tile loops run n-outer).
    ``t0`` and ``i`` count scan steps; with ``rev`` step t reads time L - 1 - t."""
    length = bm.shape[1]
    for i in range(steps):
        off = _row(b, _tm(t0 + i, length, rev), length, n_chan, d0)
        for c in range(w):
            j = off + np.uint64(c)
            x = df[j] + bias[c]
            v = _softplus(x) if softplus else x
            uv = uf[j]
            ub[i, c] = uv
            dtb[i, c] = v
            dub[i, c] = v * uv
    _stage_bc(bm, cm, rev, b, t0, steps, bt, ct)


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _stage_bc(bm, cm, rev, b, t0, steps, bt, ct):
    """B and C of one chunk transposed to (N, steps): the tile loops run n-outer."""
    length = bm.shape[1]
    for i in range(steps):
        tm = _tm(t0 + i, length, rev)
        for n in range(bm.shape[2]):
            bt[n, i] = bm[b, tm, n]
            ct[n, i] = cm[b, tm, n]


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _forward_tile(s, a, dtb, dub, bt, ct, yb, steps, w):
    """Advance the (N, w) state tile ``s`` over one chunk, adding C_t . s_t to ``yb`` (steps, w).

    n-outer: the N rows of the recurrence are independent, so each row runs through the whole
    chunk at once and its loop overhead is paid once per chunk rather than once per step.
    """
    for n in range(s.shape[0]):
        for i in range(steps):
            bn = bt[n, i]
            cn = ct[n, i]
            for c in range(w):
                sv = _exp(dtb[i, c] * a[n, c]) * s[n, c] + dub[i, c] * bn
                s[n, c] = sv
                yb[i, c] += cn * sv


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True, nogil=True)
def _forward_kernel(uf, df, a_t, bm, cm, dvec, zf, bias, softplus, has_z, rev,
                    outf, ckpt, save_ckpt, s_init, has_init, s_last, save_last,
                    lanes, j0, j1):  # fmt: skip
    """out = scan(...) (* silu(z)); optionally the chunk states (the backward rebuilds the
    pre-gate output from its recomputed states, so the forward does not save it).

    (batch, L, D) arrays come flattened (suffix f). States are (batch, N, D): ``s_init`` the one
    before the first step (``has_init``; zero otherwise), ``s_last`` receives the one after the
    last step (``save_last``); with them a long sequence can be scanned piece by piece."""
    nb, length, n_state = bm.shape
    n_chan = a_t.shape[1]
    nblk = (n_chan + lanes - 1) // lanes
    n_chunks = (length + CHUNK - 1) // CHUNK
    for job in range(j0, j1):
        b, d0, w = _block(job, nblk, n_chan, lanes)
        a = a_t[:, d0 : d0 + w].copy()  # (N, w)
        dv = dvec[d0 : d0 + w]
        bs = bias[d0 : d0 + w]
        s = np.zeros((n_state, w), a_t.dtype)
        if has_init:
            s[:] = s_init[b, :, d0 : d0 + w]
        ub = np.empty((CHUNK, w), a_t.dtype)
        dtb = np.empty((CHUNK, w), a_t.dtype)
        dub = np.empty((CHUNK, w), a_t.dtype)
        yb = np.empty((CHUNK, w), a_t.dtype)
        bt = np.empty((n_state, CHUNK), a_t.dtype)
        ct = np.empty((n_state, CHUNK), a_t.dtype)
        for k in range(n_chunks):
            t0 = k * CHUNK
            steps = min(CHUNK, length - t0)
            if save_ckpt:
                ckpt[b, k, :, d0 : d0 + w] = s  # state before step t0
            _stage_chunk(uf, df, bm, cm, bs, softplus, rev, b, t0, steps, n_chan, d0, w,
                         ub, dtb, dub, bt, ct)  # fmt: skip
            for i in range(steps):
                for c in range(w):
                    yb[i, c] = dv[c] * ub[i, c]
            if w == lanes:  # constant trip count: LLVM vectorises the channel loop completely
                _forward_tile(s, a, dtb, dub, bt, ct, yb, steps, LANES)
            else:
                _forward_tile(s, a, dtb, dub, bt, ct, yb, steps, w)
            for i in range(steps):
                off = _row(b, _tm(t0 + i, length, rev), length, n_chan, d0)
                for c in range(w):
                    j = off + np.uint64(c)
                    yv = yb[i, c]
                    if has_z:
                        zv = zf[j]
                        yv = yv * zv * _sigmoid(zv)
                    outf[j] = yv
        if save_last:
            s_last[b, :, d0 : d0 + w] = s


@njit(cache=True)
def _take_inputs(p, dt):
    """The scan's inputs, first in both kernels' packed calls (``_Inputs.args``), and the next
    slot."""
    uf, k = take1(p, HEADER, dt)
    df, k = take1(p, k, dt)
    a_t, k = take2(p, k, dt)
    bm, k = take3(p, k, dt)
    cm, k = take3(p, k, dt)
    dvec, k = take1(p, k, dt)
    zf, k = take1(p, k, dt)
    bias, k = take1(p, k, dt)
    softplus, k = take_bool(p, k)
    has_z, k = take_bool(p, k)
    rev, k = take_bool(p, k)
    return uf, df, a_t, bm, cm, dvec, zf, bias, softplus, has_z, rev, k


@njit(cache=True)
def _forward_items(p, dt):
    """The forward's work items from a packed call (ssamba.ops.kernel_entry), one at a time."""
    uf, df, a_t, bm, cm, dvec, zf, bias, softplus, has_z, rev, k = _take_inputs(p, dt)
    outf, k = take1(p, k, dt)
    ckpt, k = take4(p, k, dt)
    save_ckpt, k = take_bool(p, k)
    s_init, k = take3(p, k, dt)
    has_init, k = take_bool(p, k)
    s_last, k = take3(p, k, dt)
    save_last, k = take_bool(p, k)
    lanes, k = take_int(p, k)
    j = next_item(p)
    while j >= 0:
        try:
            _forward_kernel(uf, df, a_t, bm, cm, dvec, zf, bias, softplus, has_z, rev, outf,
                            ckpt, save_ckpt, s_init, has_init, s_last, save_last, lanes, j,
                            j + 1)  # fmt: skip
        except Exception:  # noqa: BLE001 - no exception leaves a C entry: the caller raises
            failed(p)
        j = next_item(p)


def _forward_entry32(p):
    _forward_items(p, np.float32)


def _forward_entry64(p):
    _forward_items(p, np.float64)


FORWARD = NativeKernel(
    _forward_kernel, "1123311 1bbb 14b3b3bi", {4: _forward_entry32, 8: _forward_entry64}
)


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _stage_grad_rows(uf, df, zf, doutf, bias, dv, softplus, has_z, rev, b, t0, steps, length,
                     n_chan, d0, work, w):  # fmt: skip
    """One pass over one chunk of one channel block, before its tile: everything elementwise.

    Fills the ``work`` planes (see :data:`_W_U` ...): u, dt = softplus(delta + bias), dt u,
    softplus' (1 without softplus), dy = dL/dy through the gate out = y silu(z), dz's factor
    (dz = factor * ypre once the tile has rebuilt ypre), ypre's direct term D u, and zeros for
    the tile's accumulators."""
    for i in range(steps):
        off = _row(b, _tm(t0 + i, length, rev), length, n_chan, d0)
        for c in range(w):
            j = off + np.uint64(c)
            x = df[j] + bias[c]
            if softplus:
                v, gs = _softplus_sigmoid(x)
            else:
                v, gs = x, _F1
            uv = uf[j]
            g = doutf[j]
            if has_z:
                zv = zf[j]
                sg = _sigmoid(zv)
                work[_W_GZ, i, c] = g * sg * (_F1 + zv * (_F1 - sg))
                g = g * zv * sg
            work[_W_U, i, c] = uv
            work[_W_DT, i, c] = v
            work[_W_DU, i, c] = v * uv
            work[_W_SPG, i, c] = gs
            work[_W_DY, i, c] = g
            work[_W_Y, i, c] = dv[c] * uv
            work[_W_DDT, i, c] = _F0
            work[_W_HB, i, c] = _F0


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _grad_tile(s0, h, d_a, a, work, bt, ct, dbacc, dcacc, zero, steps, w):
    """Gradients through one chunk of one channel block, one state row n at a time.

    Rows are independent in both recurrences, so each row first recomputes its states
    (s_{t0-1} .. s_{t0+steps-1} from the saved ``s0``) into a (CHUNK + 1, w) plane that stays in
    L1, then runs the adjoint backwards: h_t = dL/ds_t = dy_t C_t + exp(dt_{t+1} A) h_{t+1}
    (``h`` carries it across chunks), and with q = h_t s_{t-1} exp(dt_t A):
      dA += q dt,  ddt += sum_n q A,  hb += sum_n h B (-> du, ddt),  dB_n += sum_c h dt u,
      dC_n += sum_c dy s_t,  ypre += C_n s_t (the forward does not save ypre).
    LLVM does not vectorise a loop that read-modify-writes several arrays it cannot prove
    distinct, so each loop updates one or two."""
    dtb, dub, dyb = work[_W_DT], work[_W_DU], work[_W_DY]
    ddt, hb, yb = work[_W_DDT], work[_W_HB], work[_W_Y]
    st, dec, hbuf, hd = work[_W_ST], work[_W_DEC], work[_W_H], work[_W_HD]
    for n in range(s0.shape[0]):
        for c in range(w):
            st[0, c] = s0[n, c]
        for i in range(steps):  # the running state lives in s0: reading st back blocks SIMD
            bn = bt[n, i]
            for c in range(w):
                e = _exp(dtb[i, c] * a[n, c])
                v = e * s0[n, c] + dub[i, c] * bn
                dec[i, c] = e
                s0[n, c] = v
                st[i + 1, c] = v
        # hd[i] = h_i exp(dt_i A), what step i passes back to step i - 1. A plane rather than
        # a running row: keeping h[n] in registers across this backward loop needs a runtime
        # alias check that LLVM words too strictly for a descending loop, and falls back to
        # scalar code (4x slower, measured).
        for c in range(w):
            hd[steps, c] = h[n, c]
        for r in range(steps):
            i = steps - 1 - r  # (a negative range step would make LLVM fear negative indices)
            cn = ct[n, i]
            for c in range(w):
                hv = hd[i + 1, c] + dyb[i, c] * cn
                hbuf[i, c] = hv
                hd[i, c] = hv * dec[i, c]
        for c in range(w):
            h[n, c] = hd[0, c]
        for i in range(steps):
            for c in range(w):
                q = hbuf[i, c] * st[i, c] * dec[i, c]
                d_a[n, c] += q * dtb[i, c]
                ddt[i, c] += q * a[n, c]
        for i in range(steps):
            bn = bt[n, i]
            cn = ct[n, i]
            for c in range(w):
                hb[i, c] += hbuf[i, c] * bn
                yb[i, c] += st[i + 1, c] * cn
        for i in range(steps):
            acc_c = zero
            acc_b = zero
            for c in range(w):
                acc_c += dyb[i, c] * st[i + 1, c]
                acc_b += hbuf[i, c] * dub[i, c]
            dcacc[i, n] += acc_c
            dbacc[i, n] += acc_b


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _write_grad_rows(duf, ddeltaf, dzf, dv, has_z, rev, b, t0, steps, length, n_chan, d0, work,
                     dd, dbias, w):  # fmt: skip
    """One pass after the tile: du, d(delta), dz of the chunk; D's and delta_bias' sums."""
    for i in range(steps):
        off = _row(b, _tm(t0 + i, length, rev), length, n_chan, d0)
        for c in range(w):
            j = off + np.uint64(c)
            dyv = work[_W_DY, i, c]
            uv = work[_W_U, i, c]
            hbv = work[_W_HB, i, c]
            duf[j] = dyv * dv[c] + hbv * work[_W_DT, i, c]
            g = (work[_W_DDT, i, c] + hbv * uv) * work[_W_SPG, i, c]
            ddeltaf[j] = g
            dbias[c] += g
            dd[c] += dyv * uv
            if has_z:
                dzf[j] = work[_W_GZ, i, c] * work[_W_Y, i, c]


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _block_grads(uf, df, zf, doutf, duf, ddeltaf, dzf, bias, dv, softplus, has_z, rev, b, t0,
                 steps, length, n_chan, d0, s0, h, d_a, a, dd, dbias, work, bt, ct, dbacc, dcacc,
                 zero, w):  # fmt: skip
    """Stage, tile, write back: one chunk of one channel block (three passes over its rows)."""
    _stage_grad_rows(uf, df, zf, doutf, bias, dv, softplus, has_z, rev, b, t0, steps, length,
                     n_chan, d0, work, w)  # fmt: skip
    _grad_tile(s0, h, d_a, a, work, bt, ct, dbacc, dcacc, zero, steps, w)
    _write_grad_rows(duf, ddeltaf, dzf, dv, has_z, rev, b, t0, steps, length, n_chan, d0, work,
                     dd, dbias, w)  # fmt: skip


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True, nogil=True)
def _backward_kernel(uf, df, a_t, bm, cm, dvec, zf, bias, softplus, has_z, rev, ckpt, doutf,
                     duf, ddeltaf, dzf, da_part, db_part, dc_part, dd_part, dbias_part, lanes,
                     group, j0, j1):  # fmt: skip
    """Gradients of the scan. Work item = (batch row, group of ``group`` channel blocks), run
    chunk by chunk backwards, all blocks of the group within a chunk: the chunk's rows of every
    (batch, L, D) array are read and written while in cache, B and C are staged once per group,
    and dB, dC (sums over channels) are summed over the group's blocks in place, one partial
    per group. da/dd/dbias: one partial per batch row."""
    nb, length, n_state = bm.shape
    n_chan = a_t.shape[1]
    nblk = (n_chan + lanes - 1) // lanes
    ngrp = (nblk + group - 1) // group
    n_chunks = (length + CHUNK - 1) // CHUNK
    wd = a_t.dtype
    zero = np.zeros(1, wd)[0]
    for job in range(j0, j1):
        b, g = job // ngrp, job % ngrp
        blk0 = g * group
        nbk = min(nblk, blk0 + group) - blk0
        # per block of the group: A, the adjoint carried across chunks, dA, dD, d(delta_bias)
        a = np.zeros((nbk, n_state, lanes), wd)
        h = np.zeros((nbk, n_state, lanes), wd)
        d_a = np.zeros((nbk, n_state, lanes), wd)
        dd = np.zeros((nbk, lanes), wd)
        dbias = np.zeros((nbk, lanes), wd)
        for bi in range(nbk):
            d0 = (blk0 + bi) * lanes
            a[bi, :, : min(lanes, n_chan - d0)] = a_t[:, d0 : d0 + lanes]
        work = np.zeros((_W_PLANES, CHUNK + 1, lanes), wd)
        s0 = np.zeros((n_state, lanes), wd)
        bt = np.empty((n_state, CHUNK), wd)
        ct = np.empty((n_state, CHUNK), wd)
        dbacc = np.empty((CHUNK, n_state), wd)
        dcacc = np.empty((CHUNK, n_state), wd)
        for k in range(n_chunks - 1, -1, -1):
            t0 = k * CHUNK
            steps = min(CHUNK, length - t0)
            _stage_bc(bm, cm, rev, b, t0, steps, bt, ct)
            dbacc[:] = zero
            dcacc[:] = zero
            for bi in range(nbk):
                d0 = (blk0 + bi) * lanes
                w = min(lanes, n_chan - d0)
                s0[:, :w] = ckpt[b, k, :, d0 : d0 + w]
                bs = bias[d0 : d0 + w]
                dv = dvec[d0 : d0 + w]
                if w == lanes:  # constant trip count: LLVM vectorises the channel loops fully
                    _block_grads(uf, df, zf, doutf, duf, ddeltaf, dzf, bs, dv, softplus, has_z,
                                 rev, b, t0, steps, length, n_chan, d0, s0, h[bi], d_a[bi], a[bi],
                                 dd[bi], dbias[bi], work, bt, ct, dbacc, dcacc, zero,
                                 BWD_LANES)  # fmt: skip
                else:
                    _block_grads(uf, df, zf, doutf, duf, ddeltaf, dzf, bs, dv, softplus, has_z,
                                 rev, b, t0, steps, length, n_chan, d0, s0, h[bi], d_a[bi], a[bi],
                                 dd[bi], dbias[bi], work, bt, ct, dbacc, dcacc, zero,
                                 w)  # fmt: skip
            for i in range(steps):
                tm = _tm(t0 + i, length, rev)
                for n in range(n_state):
                    db_part[g, b, tm, n] = dbacc[i, n]
                    dc_part[g, b, tm, n] = dcacc[i, n]
        for bi in range(nbk):
            d0 = (blk0 + bi) * lanes
            w = min(lanes, n_chan - d0)
            da_part[b, :, d0 : d0 + w] = d_a[bi, :, :w]
            dd_part[b, d0 : d0 + w] = dd[bi, :w]
            dbias_part[b, d0 : d0 + w] = dbias[bi, :w]


@njit(cache=True)
def _backward_items(p, dt):
    """The backward's work items from a packed call (ssamba.ops.kernel_entry), one at a time."""
    uf, df, a_t, bm, cm, dvec, zf, bias, softplus, has_z, rev, k = _take_inputs(p, dt)
    ckpt, k = take4(p, k, dt)
    doutf, k = take1(p, k, dt)
    duf, k = take1(p, k, dt)
    ddeltaf, k = take1(p, k, dt)
    dzf, k = take1(p, k, dt)
    da_part, k = take3(p, k, dt)
    db_part, k = take4(p, k, dt)
    dc_part, k = take4(p, k, dt)
    dd_part, k = take2(p, k, dt)
    dbias_part, k = take2(p, k, dt)
    lanes, k = take_int(p, k)
    group, k = take_int(p, k)
    j = next_item(p)
    while j >= 0:
        try:
            _backward_kernel(uf, df, a_t, bm, cm, dvec, zf, bias, softplus, has_z, rev, ckpt,
                             doutf, duf, ddeltaf, dzf, da_part, db_part, dc_part, dd_part,
                             dbias_part, lanes, group, j, j + 1)  # fmt: skip
        except Exception:  # noqa: BLE001 - no exception leaves a C entry: the caller raises
            failed(p)
        j = next_item(p)


def _backward_entry32(p):
    _backward_items(p, np.float32)


def _backward_entry64(p):
    _backward_items(p, np.float64)


BACKWARD = NativeKernel(
    _backward_kernel, "1123311 1bbb 41111344 22ii", {4: _backward_entry32, 8: _backward_entry64}
)


# ---------------------------------------------------------------------------------------------
# torch side


def _n_groups(n_chan: int) -> int:
    """Backward work items per batch row: groups of ``GROUP`` channel blocks."""
    nblk = (n_chan + BWD_LANES - 1) // BWD_LANES
    return (nblk + GROUP - 1) // GROUP


class _Inputs:
    """Inputs cast to the working dtype, made contiguous, optional ones replaced by dummies."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse=False):
        self.dtype = torch.promote_types(u.dtype, torch.float32)
        wd = self.dtype

        def prep(t):
            return t.detach().to(wd).contiguous()

        n_chan = u.shape[-1]
        self.u, self.delta, self.B, self.C = prep(u), prep(delta), prep(B), prep(C)
        self.a_t = A.detach().to(wd).t().contiguous()  # (N, D): rows of one state, all channels
        self.D = prep(D) if D is not None else torch.zeros(n_chan, dtype=wd)
        self.bias = prep(delta_bias) if delta_bias is not None else torch.zeros(n_chan, dtype=wd)
        self.has_z = z is not None
        self.z = prep(z) if z is not None else torch.zeros(1, 1, 1, dtype=wd)
        self.softplus = bool(delta_softplus)
        self.reverse = bool(reverse)

    @property
    def n_jobs(self) -> int:
        nb, _, n_chan = self.u.shape
        return nb * ((n_chan + LANES - 1) // LANES)

    def args(self):
        return (self.u, self.delta, self.a_t, self.B, self.C, self.D, self.z, self.bias,
                self.softplus, self.has_z, self.reverse)  # fmt: skip


def _forward_call(inp: _Inputs, save: bool, out: torch.Tensor | None = None, state=None,
                  keep_state: bool = False):  # fmt: skip
    """(kernel call, out, ckpt, last state) of the forward; with ``save`` the chunk states.
    ``state``: the (batch, D, N) state before the first step (zero if None);
    ``keep_state``: also return the state after the last step (batch, D, N), else None."""
    nb, length, n_chan = inp.u.shape
    n_state = inp.a_t.shape[0]
    wd = inp.dtype
    if out is None:
        out = torch.empty(nb, length, n_chan, dtype=wd)
    n_chunks = (length + CHUNK - 1) // CHUNK
    shape = (nb, n_chunks, n_state, n_chan) if save else (1, 1, 1, 1)
    ckpt = torch.empty(shape, dtype=wd)
    dummy = torch.zeros(1, 1, 1, dtype=wd)
    # the kernel's state layout is (batch, N, D): one state row is contiguous over channels
    s_init = state.detach().to(wd).transpose(1, 2).contiguous() if state is not None else dummy
    s_last = torch.empty(nb, n_state, n_chan, dtype=wd) if keep_state else dummy
    args = (*inp.args(), out, ckpt, save, s_init, state is not None, s_last, keep_state, LANES)
    last = s_last.transpose(1, 2) if keep_state else None
    return (FORWARD, args, inp.n_jobs), out, ckpt, last


def _forward(inp: _Inputs, save: bool):
    call, out, ckpt, _ = _forward_call(inp, save)
    run_parallel([call])
    return out, ckpt


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        inp = _Inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
        out, ckpt = _forward(inp, save=True)
        ctx.inp = inp
        ctx.save_for_backward(ckpt)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in inputs)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        inp = ctx.inp
        (ckpt,) = ctx.saved_tensors
        wd = inp.dtype
        nb, length, n_chan = inp.u.shape
        n_state = inp.a_t.shape[0]
        ngrp = _n_groups(n_chan)
        dout = dout.detach().to(wd).contiguous()
        du = torch.empty(nb, length, n_chan, dtype=wd)
        ddelta = torch.empty_like(du)
        dz = torch.empty_like(du) if inp.has_z else torch.zeros(1, 1, 1, dtype=wd)
        da = torch.empty(nb, n_state, n_chan, dtype=wd)
        db = torch.empty(ngrp, nb, length, n_state, dtype=wd)
        dc = torch.empty_like(db)
        dd = torch.empty(nb, n_chan, dtype=wd)
        dbias = torch.empty_like(dd)
        args = (*inp.args(), ckpt, dout, du, ddelta, dz, da, db, dc, dd, dbias, BWD_LANES,
                GROUP)  # fmt: skip
        run_parallel([(BACKWARD, args, nb * ngrp)])
        db, dc = (db[0], dc[0]) if ngrp == 1 else (db.sum(0), dc.sum(0))
        grads = [du, ddelta, da.sum(0).t(), db, dc, dd.sum(0),
                 dz if inp.has_z else None, dbias.sum(0)]  # fmt: skip
        out = []
        for g, dtype, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[:8], strict=True):
            out.append(g.to(dtype) if (need and g is not None and dtype is not None) else None)
        return (*out, None, None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True,
                       reverse=False):  # fmt: skip
    """Fused CPU selective scan (same contract as :func:`ssamba.ops.scan.selective_scan_ref`).

    ``reverse=True`` scans from the last step to the first, i.e. it equals
    ``selective_scan_cpu(*(x.flip(1) for x in time-indexed inputs)).flip(1)`` without the copies.
    """
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _SelectiveScanCPU.apply(*tensors, delta_softplus, reverse)
    # inference: no autograd graph, no chunk states
    out, _ = _forward(_Inputs(*tensors, delta_softplus, reverse), save=False)
    return out.to(u.dtype)


def selective_scan_cpu_many(scans, states=None):
    """Inference only: several scans in one parallel dispatch (e.g. both directions of a mixer).

    ``scans``: tuples ``(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)``; returns
    the outputs in order. Nothing may require grad. ``states``: one (batch, D, N) state (or None)
    per scan, the state before its first step (for ``reverse``, before step L - 1); then the
    result is ``(outputs, last states)``, the states after each scan's last step: scanning
    ``[0, t)`` and then ``[t, L)`` from the first part's last state equals one scan of ``[0, L)``.
    """
    scans = list(scans)
    carry = states is not None
    states = list(states) if carry else [None] * len(scans)
    if len(states) != len(scans):
        raise ValueError(f"{len(scans)} scans but {len(states)} states")
    calls, outs, lasts = [], [], []
    for (u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse), state in zip(
        scans, states, strict=True
    ):
        check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
        if state is not None and tuple(state.shape) != (u.shape[0], u.shape[2], A.shape[1]):
            raise ValueError(
                f"state must be (batch, D, N) = {(u.shape[0], u.shape[2], A.shape[1])}, "
                f"got {tuple(state.shape)}"
            )
        inp = _Inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
        call, out, _, last = _forward_call(inp, save=False, state=state, keep_state=carry)
        calls.append(call)
        outs.append(out)
        lasts.append(last)
    run_parallel(calls)
    outs = [out.to(s[0].dtype) for out, s in zip(outs, scans, strict=True)]
    return (outs, lasts) if carry else outs

"""Fused selective scan for the CPU: numba kernels for the forward and the backward.

Layout and semantics are those of :mod:`ssamba.ops.scan` (u, delta, z: (batch, L, D); B, C:
(batch, L, N); A: (D, N)). How the kernels are made fast (measured on this machine class, see
docs/scan.md):

* Work item = (batch row, block of ``LANES`` channels). The ``(N, LANES)`` state tile lives in L1
  and the innermost loop runs over the channels of the block, so LLVM vectorises it and ``y``
  needs no horizontal sum. Work items are spread over threads by :func:`run_parallel`.
* ``exp`` in float32 is a branch-free polynomial (``_exp32``) that LLVM can vectorise; the scalar
  libm call numba emits for ``math.exp`` is 3-5x slower. float64 keeps the exact ``math.exp`` (the
  polynomial is not accurate enough for gradcheck); the same kernel source serves both dtypes
  through the ``_exp``/``_softplus``/``_sigmoid`` overloads.
* Inner loops index 1-D row views (``row[c]``), never ``x[b, t, d0 + c]``: the latter made LLVM
  emit gathers.
* The forward saves the state every ``CHUNK`` steps (never a (batch, L, D, N) tensor); the backward
  recomputes each chunk's states into a small buffer and runs the adjoint recurrence in reverse.
* d(B) and d(C) are sums over channels, i.e. over work items running in parallel: each channel
  block writes its own partial sums and torch adds them up afterwards (no races, no atomics).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from ssamba.ops.shapes import check_scan_shapes

LANES = 16  # channels per work item: one (N x 16) fp32 tile = 1 KiB for N = 16
CHUNK = 64  # steps between saved states; the backward keeps (CHUNK + 1) states of one tile

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
    k = np.int32(x * _LOG2E + _EXP_SHIFT) - np.int32(128)
    kf = np.float32(k)
    r = x - kf * _LN2_HI
    r = r - kf * _LN2_LO
    p0, p1, p2, p3, p4, p5 = _EXP_P
    p = p0 * r + p1
    p = p * r + p2
    p = p * r + p3
    p = p * r + p4
    p = p * r + p5
    p = p * r * r + r + _F1
    return p * _int32_bits_as_float32((k + np.int32(127)) << np.int32(23))


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
                    outf, ypref, save_ypre, ckpt, save_ckpt, s_init, has_init, s_last, save_last,
                    lanes, j0, j1):  # fmt: skip
    """out = scan(...) (* silu(z)); optionally ypre (before the gate) and the chunk states.

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
                        if save_ypre:
                            ypref[j] = yv
                        zv = zf[j]
                        yv = yv * zv * _sigmoid(zv)
                    outf[j] = yv
        if save_last:
            s_last[b, :, d0 : d0 + w] = s


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _recompute_tile(s0, a, dtb, dub, bt, states, decays, steps, w):
    """states[n, i] = s_{t0+i-1} (states[n, 0] = s0, the saved one), decays[n, i] = exp(dt A).

    The running state lives in the row ``s0`` (updated in place): reading states[n, i] right
    after writing it made LLVM see a dependence and give up vectorising."""
    for n in range(s0.shape[0]):
        for c in range(w):
            states[n, 0, c] = s0[n, c]
        for i in range(steps):
            bn = bt[n, i]
            for c in range(w):
                e = _exp(dtb[i, c] * a[n, c])
                v = e * s0[n, c] + dub[i, c] * bn
                decays[n, i, c] = e
                s0[n, c] = v
                states[n, i + 1, c] = v


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True)
def _adjoint_tile(h, states, decays, a, dyb, dtb, dub, bt, ct, d_a, ddt, hb, hbuf, dcb, dbb,
                  zero, steps, w):  # fmt: skip
    """Run the adjoint recurrence backwards through one chunk; h (N, w) carries dL/ds across.

    Per step, with h_t = dL/ds_t = dy_t C_t + exp(dt_{t+1} A) h_{t+1} and
    q = h_t * s_{t-1} * exp(dt_t A):
      dA += q dt,  ddt += sum_n q A,  hb += sum_n h B (-> du, ddt),  dB_n = sum_c h dt u,
      dC_n = sum_c dy s_t.
    Each state row n is independent: first its recurrence (storing h_t in ``hbuf``), then the
    step-parallel products in separate simple loops. LLVM does not vectorise a loop that
    read-modify-writes several arrays it cannot prove distinct, so each loop updates one or two.
    """
    for n in range(h.shape[0]):
        for r in range(steps):
            i = steps - 1 - r  # (a negative range step would make LLVM fear negative indices)
            cn = ct[n, i]
            for c in range(w):
                hv = h[n, c] + dyb[i, c] * cn
                hbuf[i, c] = hv
                h[n, c] = hv * decays[n, i, c]
        for i in range(steps):
            for c in range(w):
                q = hbuf[i, c] * states[n, i, c] * decays[n, i, c]
                d_a[n, c] += q * dtb[i, c]
                ddt[i, c] += q * a[n, c]
        for i in range(steps):
            bn = bt[n, i]
            for c in range(w):
                hb[i, c] += hbuf[i, c] * bn
        for i in range(steps):
            acc_c = zero
            acc_b = zero
            for c in range(w):
                acc_c += dyb[i, c] * states[n, i + 1, c]
                acc_b += hbuf[i, c] * dub[i, c]
            dcb[n, i] = acc_c
            dbb[n, i] = acc_b


@njit(fastmath=_KERNEL_FLAGS, error_model="numpy", cache=True, nogil=True)
def _backward_kernel(uf, df, a_t, bm, cm, dvec, zf, bias, softplus, has_z, rev, ypref, ckpt,
                     doutf, duf, ddeltaf, dzf, da_part, db_part, dc_part, dd_part, dbias_part,
                     lanes, j0, j1):  # fmt: skip
    """Gradients of the scan. Per-item partial sums: da/dd/dbias per batch row, db/dc per block."""
    nb, length, n_state = bm.shape
    n_chan = a_t.shape[1]
    nblk = (n_chan + lanes - 1) // lanes
    n_chunks = (length + CHUNK - 1) // CHUNK
    for job in range(j0, j1):
        b, d0, w = _block(job, nblk, n_chan, lanes)
        blk = job % nblk
        wd = a_t.dtype
        zero = np.zeros(1, wd)[0]
        a = a_t[:, d0 : d0 + w].copy()
        dv = dvec[d0 : d0 + w]
        bs = bias[d0 : d0 + w]
        ub = np.empty((CHUNK, w), wd)
        dtb = np.empty((CHUNK, w), wd)
        dub = np.empty((CHUNK, w), wd)
        dyb = np.empty((CHUNK, w), wd)
        ddt = np.empty((CHUNK, w), wd)
        hb = np.empty((CHUNK, w), wd)
        hbuf = np.empty((CHUNK, w), wd)
        bt = np.empty((n_state, CHUNK), wd)
        ct = np.empty((n_state, CHUNK), wd)
        dcb = np.empty((n_state, CHUNK), wd)
        dbb = np.empty((n_state, CHUNK), wd)
        states = np.empty((n_state, CHUNK + 1, w), wd)
        decays = np.empty((n_state, CHUNK, w), wd)
        s0 = np.empty((n_state, w), wd)
        h = np.zeros((n_state, w), wd)
        d_a = np.zeros((n_state, w), wd)
        dd = np.zeros(w, wd)
        dbias = np.zeros(w, wd)
        for k in range(n_chunks - 1, -1, -1):
            t0 = k * CHUNK
            steps = min(CHUNK, length - t0)
            _stage_chunk(uf, df, bm, cm, bs, softplus, rev, b, t0, steps, n_chan, d0, w,
                         ub, dtb, dub, bt, ct)  # fmt: skip
            s0[:] = ckpt[b, k, :, d0 : d0 + w]
            # dy = dL/dy through the gate out = y * silu(z); dz on the way
            for i in range(steps):
                off = _row(b, _tm(t0 + i, length, rev), length, n_chan, d0)
                for c in range(w):
                    j = off + np.uint64(c)
                    g = doutf[j]
                    if has_z:
                        zv = zf[j]
                        sg = _sigmoid(zv)
                        dzf[j] = g * ypref[j] * sg * (_F1 + zv * (_F1 - sg))
                        g = g * zv * sg
                    dyb[i, c] = g
                    ddt[i, c] = zero
                    hb[i, c] = zero
            if w == lanes:  # constant trip count: LLVM vectorises the channel loop completely
                _recompute_tile(s0, a, dtb, dub, bt, states, decays, steps, LANES)
                _adjoint_tile(h, states, decays, a, dyb, dtb, dub, bt, ct, d_a, ddt, hb, hbuf,
                              dcb, dbb, zero, steps, LANES)  # fmt: skip
            else:
                _recompute_tile(s0, a, dtb, dub, bt, states, decays, steps, w)
                _adjoint_tile(h, states, decays, a, dyb, dtb, dub, bt, ct, d_a, ddt, hb, hbuf,
                              dcb, dbb, zero, steps, w)  # fmt: skip
            for i in range(steps):
                tm = _tm(t0 + i, length, rev)
                for n in range(n_state):
                    dc_part[blk, b, tm, n] = dcb[n, i]
                    db_part[blk, b, tm, n] = dbb[n, i]
            # du and d(delta) from the direct term D u, the drive dt u B and the decay
            for i in range(steps):
                off = _row(b, _tm(t0 + i, length, rev), length, n_chan, d0)
                for c in range(w):
                    j = off + np.uint64(c)
                    dtv = dtb[i, c]
                    duf[j] = dyb[i, c] * dv[c] + hb[i, c] * dtv
                    g = ddt[i, c] + hb[i, c] * ub[i, c]
                    if softplus:
                        x = df[j] + bs[c]
                        g = g if x > _SOFTPLUS_THRESHOLD else g * _sigmoid(x)
                    ddeltaf[j] = g
                    dbias[c] += g
                    dd[c] += dyb[i, c] * ub[i, c]
        da_part[b, :, d0 : d0 + w] = d_a
        dd_part[b, d0 : d0 + w] = dd
        dbias_part[b, d0 : d0 + w] = dbias


# ---------------------------------------------------------------------------------------------
# torch side

_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def num_threads() -> int:
    """Threads the kernels use: torch's intra-op count (the kernels never run alongside torch)."""
    return max(1, torch.get_num_threads())


def run_parallel(calls) -> None:
    """Run numba kernels ``fn(*args, j0, j1)`` over their job ranges on ``num_threads()`` threads.

    ``calls`` is a list of ``(fn, args, n_jobs)``. Each range is cut into one piece per thread and
    thread k runs piece k of every call. The kernels release the GIL (``nogil``); the helper
    threads are plain Python threads that sleep on a lock between calls. numba's own ``prange``
    threading layer is not used: it brings a second OpenMP runtime (the system libgomp, while
    torch ships its own) whose workers spin after every parallel region and, on a 2-vCPU machine,
    steal the cores from torch's next operation (and torch's from numba's).
    """
    global _POOL, _POOL_SIZE
    n = num_threads()
    pieces = [[] for _ in range(n)]
    for fn, args, n_jobs in calls:
        parts = min(n, max(1, n_jobs))
        for k in range(parts):
            j0, j1 = n_jobs * k // parts, n_jobs * (k + 1) // parts
            if j1 > j0:
                pieces[k].append((fn, args, j0, j1))

    def work(items):
        for fn, args, j0, j1 in items:
            fn(*args, j0, j1)

    helpers = [p for p in pieces[1:] if p]
    if not helpers:
        work(pieces[0])
        return
    if _POOL is None or _POOL_SIZE < len(helpers):
        if _POOL is not None:
            _POOL.shutdown(wait=False)
        _POOL = ThreadPoolExecutor(max_workers=len(helpers), thread_name_prefix="ssamba-scan")
        _POOL_SIZE = len(helpers)
    futures = [_POOL.submit(work, p) for p in helpers]
    work(pieces[0])
    for f in futures:
        f.result()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def _flat(t: torch.Tensor) -> np.ndarray:
    """(batch, L, D) tensor as the flat array the kernels index with unsigned offsets."""
    return t.detach().reshape(-1).numpy()


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
        return (_flat(self.u), _flat(self.delta), _np(self.a_t), _np(self.B), _np(self.C),
                _np(self.D), _flat(self.z), _np(self.bias), self.softplus, self.has_z,
                self.reverse)  # fmt: skip


def _forward_call(inp: _Inputs, save: bool, out: torch.Tensor | None = None, state=None,
                  keep_state: bool = False):  # fmt: skip
    """(kernel call, out, ypre, ckpt, last state) of the forward; with ``save`` the chunk states
    and ypre. ``state``: the (batch, D, N) state before the first step (zero if None);
    ``keep_state``: also return the state after the last step (batch, D, N), else None."""
    nb, length, n_chan = inp.u.shape
    n_state = inp.a_t.shape[0]
    wd = inp.dtype
    if out is None:
        out = torch.empty(nb, length, n_chan, dtype=wd)
    save_ypre = save and inp.has_z
    ypre = torch.empty_like(out) if save_ypre else torch.zeros(1, 1, 1, dtype=wd)
    n_chunks = (length + CHUNK - 1) // CHUNK
    shape = (nb, n_chunks, n_state, n_chan) if save else (1, 1, 1, 1)
    ckpt = torch.empty(shape, dtype=wd)
    dummy = torch.zeros(1, 1, 1, dtype=wd)
    # the kernel's state layout is (batch, N, D): one state row is contiguous over channels
    s_init = state.detach().to(wd).transpose(1, 2).contiguous() if state is not None else dummy
    s_last = torch.empty(nb, n_state, n_chan, dtype=wd) if keep_state else dummy
    args = (*inp.args(), _flat(out), _flat(ypre), save_ypre, _np(ckpt), save, _np(s_init),
            state is not None, _np(s_last), keep_state, LANES)  # fmt: skip
    last = s_last.transpose(1, 2) if keep_state else None
    return (_forward_kernel, args, inp.n_jobs), out, ypre, ckpt, last


def _forward(inp: _Inputs, save: bool):
    call, out, ypre, ckpt, _ = _forward_call(inp, save)
    run_parallel([call])
    return out, ypre, ckpt


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        inp = _Inputs(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
        out, ypre, ckpt = _forward(inp, save=True)
        ctx.inp = inp
        ctx.save_for_backward(ypre, ckpt)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in inputs)
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, dout):
        inp = ctx.inp
        ypre, ckpt = ctx.saved_tensors
        wd = inp.dtype
        nb, length, n_chan = inp.u.shape
        n_state = inp.a_t.shape[0]
        nblk = (n_chan + LANES - 1) // LANES
        dout = dout.detach().to(wd).contiguous()
        du = torch.empty(nb, length, n_chan, dtype=wd)
        ddelta = torch.empty_like(du)
        dz = torch.empty_like(du) if inp.has_z else torch.zeros(1, 1, 1, dtype=wd)
        da = torch.empty(nb, n_state, n_chan, dtype=wd)
        db = torch.empty(nblk, nb, length, n_state, dtype=wd)
        dc = torch.empty_like(db)
        dd = torch.empty(nb, n_chan, dtype=wd)
        dbias = torch.empty_like(dd)
        args = (*inp.args(), _flat(ypre), _np(ckpt), _flat(dout), _flat(du), _flat(ddelta),
                _flat(dz), _np(da), _np(db), _np(dc), _np(dd), _np(dbias), LANES)  # fmt: skip
        run_parallel([(_backward_kernel, args, inp.n_jobs)])
        grads = [du, ddelta, da.sum(0).t(), db.sum(0), dc.sum(0), dd.sum(0),
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
    # inference: no autograd graph, no chunk states, no ypre
    out, _, _ = _forward(_Inputs(*tensors, delta_softplus, reverse), save=False)
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
        call, out, _, _, last = _forward_call(inp, save=False, state=state, keep_state=carry)
        calls.append(call)
        outs.append(out)
        lasts.append(last)
    run_parallel(calls)
    outs = [out.to(s[0].dtype) for out, s in zip(outs, scans, strict=True)]
    return (outs, lasts) if carry else outs

"""The selective scan as Triton kernels (GPU without compiling C++).

Layout and semantics are those of :func:`ssamba.ops.scan.selective_scan_ref`: u, delta, z
(batch, L, D); B, C (batch, L, N); A (D, N); D, delta_bias (D,). Only the last dimension must
be contiguous: strided views (``z`` as a ``chunk`` of the input projection, ``B``/``C`` as a
``split`` of ``x_proj``'s output) are read in place.

Design (the one of mamba_ssm's CUDA kernel, written sequentially):

* Grid = (batch, blocks of ``BLOCK_D`` channels). Each program keeps its (BLOCK_D, N) fp32 state
  tile in registers and walks the time axis step by step; channels past D and states past N
  (N is padded to a power of two) are masked.
* Forward: saves the state at the start of every ``CHUNK`` steps (batch, n_chunks, D, N), never
  a (batch, L, D, N) tensor; ``ypre`` (before the gate) is not saved either.
* Backward: chunks in reverse order. For each, recompute the chunk's states from its checkpoint
  into a small per-program scratch buffer (CHUNK + 1 tiles, stays in L2), then run the adjoint
  recurrence backwards through the chunk (g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}). dA, dD and
  d(delta_bias) are per-program register accumulators (summed over batch in torch); dB and dC
  are sums over channels, i.e. over programs, and use fp32 atomic adds.
* ``reverse=True`` indexes time backwards (step t reads time L - 1 - t): no flipped copies.
* Inputs fp32/bf16/fp16 are read as they are and computed in fp32; outputs and gradients are
  written in the inputs' dtypes.

Devices: CUDA tensors run the compiled kernels. CPU tensors run only in Triton's interpreter
(``TRITON_INTERPRET=1`` set before triton is imported; slow, for the tests on machines without a
GPU): the launch uses whatever device the tensors are on.

The depthwise conv + silu beside the scan is a Triton kernel of its own: ops/conv_triton.py.

Importing this module needs the ``triton`` package (ImportError otherwise, which is how
:mod:`ssamba.ops.scan` decides whether the backend exists).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ssamba.ops.shapes import check_scan_shapes, last_dim_contiguous

_add = tl.standard._sum_combine  # tl.sum's combine; tl.reduce(x, axis, _add) == tl.sum(x, axis)
CHUNK = 64  # steps between saved states; the backward's scratch holds CHUNK + 1 state tiles
BLOCK_D = 32  # channels per program (the default; see _block_d)


@triton.jit
def _step_size(x, SOFTPLUS: tl.constexpr):
    """The step dt from delta + bias: softplus (max(x, 0) + log1p(exp(-|x|)), log1p by its series
    for tiny e, x itself above 20 as torch's softplus) or, without SOFTPLUS, x as it is."""
    dt = x
    if SOFTPLUS:
        e = tl.exp(-tl.abs(x))
        lp = tl.where(e < 1e-4, e - 0.5 * e * e, tl.log(1.0 + e))
        dt = tl.where(x > 20.0, x, tl.maximum(x, 0.0) + lp)
    return dt


@triton.jit
def _step_inputs(u_p, dl_p, b_p, tm, s_ul, s_dl, s_bl, bias, mask_d, mask_n,
                 SOFTPLUS: tl.constexpr):  # fmt: skip
    """What every loop over time reads at step ``tm``, in fp32: u, x = delta + bias, the step size
    dt (:func:`_step_size` of x) and the row of B."""
    u = tl.load(u_p + tm * s_ul, mask=mask_d, other=0.0).to(tl.float32)
    x = tl.load(dl_p + tm * s_dl, mask=mask_d, other=0.0).to(tl.float32) + bias
    bt = tl.load(b_p + tm * s_bl, mask=mask_n, other=0.0).to(tl.float32)
    return u, x, _step_size(x, SOFTPLUS), bt


@triton.jit
def _program_tile(a_ptr, dv_ptr, bias_ptr, DCH, N, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    """This program's channels and states (offsets, masks, the (channel, state) offsets of its
    tile) and its A tile, D and delta_bias in fp32 (zeros for an absent D or bias)."""
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < DCH
    mask_n = offs_n < N
    mask_dn = mask_d[:, None] & mask_n[None, :]
    tile = offs_d[:, None] * N + offs_n[None, :]
    a = tl.load(a_ptr + tile, mask=mask_dn, other=0.0).to(tl.float32)
    dv = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_D:
        dv = tl.load(dv_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.zeros((BLOCK_D,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return offs_d, offs_n, mask_d, mask_n, mask_dn, tile, a, dv, bias


@triton.jit
def _row_pointers(u_ptr, dl_ptr, z_ptr, b_ptr, c_ptr, pid_b, s_ub, s_db, s_zb, s_bb, s_cb,
                  offs_d, offs_n):  # fmt: skip
    """Per-program base pointers of batch row ``pid_b`` into u, delta, z, B and C: in the loops
    only ``+ tm * stride`` remains."""
    return (u_ptr + pid_b * s_ub + offs_d, dl_ptr + pid_b * s_db + offs_d,
            z_ptr + pid_b * s_zb + offs_d, b_ptr + pid_b * s_bb + offs_n,
            c_ptr + pid_b * s_cb + offs_n)  # fmt: skip


@triton.jit
def _scan_fwd(
    u_ptr, dl_ptr, z_ptr, b_ptr, c_ptr, a_ptr, dv_ptr, bias_ptr, out_ptr, ckpt_ptr,
    L, DCH, N, n_chunks,
    s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_bb, s_bl, s_cb, s_cl, s_ob, s_ol,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, SAVE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d, offs_n, mask_d, mask_n, mask_dn, tile, a, dv, bias = _program_tile(
        a_ptr, dv_ptr, bias_ptr, DCH, N, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N)  # fmt: skip
    u_p, dl_p, z_p, b_p, c_p = _row_pointers(u_ptr, dl_ptr, z_ptr, b_ptr, c_ptr, pid_b, s_ub, s_db,
                                             s_zb, s_bb, s_cb, offs_d, offs_n)  # fmt: skip
    o_p = out_ptr + pid_b * s_ob + offs_d
    s = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    ck = ckpt_ptr + pid_b * n_chunks * DCH * N + tile
    for k in range(0, n_chunks):
        if SAVE:  # the state before the chunk's first step
            tl.store(ck + k * DCH * N, s, mask=mask_dn)
        for t in range(k * CHUNK, tl.minimum(L, k * CHUNK + CHUNK)):
            tm = L - 1 - t if REVERSE else t
            u, x, dt, bt = _step_inputs(u_p, dl_p, b_p, tm, s_ul, s_dl, s_bl, bias, mask_d, mask_n,
                                        SOFTPLUS)  # fmt: skip
            ct = tl.load(c_p + tm * s_cl, mask=mask_n, other=0.0)
            decay = tl.exp(dt[:, None] * a)
            s = decay * s + (dt * u)[:, None] * bt[None, :]
            y = tl.reduce(s * ct.to(tl.float32)[None, :], 1, _add) + dv * u
            if HAS_Z:
                zv = tl.load(z_p + tm * s_zl, mask=mask_d, other=0.0)
                zv = zv.to(tl.float32)
                y = y * zv / (1.0 + tl.exp(-zv))  # silu (tl.sigmoid: same)
            tl.store(o_p + tm * s_ol, y.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _scan_bwd(
    u_ptr, dl_ptr, z_ptr, b_ptr, c_ptr, a_ptr, dv_ptr, bias_ptr, ckpt_ptr, scr_ptr, dout_ptr,
    du_ptr, ddl_ptr, dz_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr, dbias_ptr,
    L, DCH, N, n_chunks,
    s_ub, s_ul, s_db, s_dl, s_zb, s_zl, s_bb, s_bl, s_cb, s_cl, s_gb, s_gl,
    HAS_Z: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    REVERSE: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """du, ddelta, dz: (batch, L, D) contiguous; db, dc: (batch, L, N) fp32, accumulated with
    atomics; da (batch, D, N), dd and dbias (batch, D): per batch row, summed by the caller."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    n_dblk = tl.num_programs(1)
    offs_d, offs_n, mask_d, mask_n, mask_dn, tile, a, dv, bias = _program_tile(
        a_ptr, dv_ptr, bias_ptr, DCH, N, HAS_D, HAS_BIAS, BLOCK_D, BLOCK_N)  # fmt: skip
    # this program's scratch: CHUNK + 1 tiles, slot i holds the state before chunk step i
    scr = scr_ptr + (pid_b * n_dblk + pid_d) * (CHUNK + 1) * BLOCK_D * BLOCK_N
    scr_tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + offs_n[None, :]
    u_p, dl_p, z_p, b_p, c_p = _row_pointers(u_ptr, dl_ptr, z_ptr, b_ptr, c_ptr, pid_b, s_ub, s_db,
                                             s_zb, s_bb, s_cb, offs_d, offs_n)  # fmt: skip
    g_p = dout_ptr + pid_b * s_gb + offs_d
    h = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)  # exp(dt_{t+1} A) * dL/ds_{t+1}
    d_a = tl.zeros((BLOCK_D, BLOCK_N), tl.float32)
    d_d = tl.zeros((BLOCK_D,), tl.float32)
    d_bias = tl.zeros((BLOCK_D,), tl.float32)
    ck = ckpt_ptr + pid_b * n_chunks * DCH * N + tile
    for kk in range(0, n_chunks):
        k = n_chunks - 1 - kk
        s = tl.load(ck + k * DCH * N, mask=mask_dn, other=0.0)
        tl.store(scr + scr_tile, s)
        steps = tl.minimum(L - k * CHUNK, CHUNK)
        for i in range(0, steps):  # recompute the chunk's states
            t = k * CHUNK + i
            tm = L - 1 - t if REVERSE else t
            u, x, dt, bt = _step_inputs(u_p, dl_p, b_p, tm, s_ul, s_dl, s_bl, bias, mask_d, mask_n,
                                        SOFTPLUS)  # fmt: skip
            s = tl.exp(dt[:, None] * a) * s + (dt * u)[:, None] * bt[None, :]
            tl.store(scr + (i + 1) * BLOCK_D * BLOCK_N + scr_tile, s)
        tl.debug_barrier()
        for ii in range(0, steps):  # the adjoint recurrence, backwards through the chunk
            i = steps - 1 - ii
            t = k * CHUNK + i
            tm = L - 1 - t if REVERSE else t
            u, x, dt, bt = _step_inputs(u_p, dl_p, b_p, tm, s_ul, s_dl, s_bl, bias, mask_d, mask_n,
                                        SOFTPLUS)  # fmt: skip
            ct = tl.load(c_p + tm * s_cl, mask=mask_n, other=0.0)
            ct = ct.to(tl.float32)
            dout = tl.load(g_p + tm * s_gl, mask=mask_d, other=0.0)
            dout = dout.to(tl.float32)
            s_prev = tl.load(scr + i * BLOCK_D * BLOCK_N + scr_tile)
            s_t = tl.load(scr + (i + 1) * BLOCK_D * BLOCK_N + scr_tile)
            decay = tl.exp(dt[:, None] * a)
            gofs = pid_b * L * DCH + tm * DCH + offs_d
            if HAS_Z:
                zv = tl.load(z_p + tm * s_zl, mask=mask_d, other=0.0)
                zv = zv.to(tl.float32)
                sz = 1.0 / (1.0 + tl.exp(-zv))
                ypre = tl.reduce(s_t * ct[None, :], 1, _add) + dv * u
                dz = dout * ypre * sz * (1.0 + zv * (1.0 - sz))
                tl.store(dz_ptr + gofs, dz.to(dz_ptr.dtype.element_ty), mask=mask_d)
                dy = dout * zv * sz
            else:
                dy = dout
            g = h + dy[:, None] * ct[None, :]  # dL/ds_t
            q = g * decay * s_prev
            d_a += q * dt[:, None]
            hb = tl.reduce(g * bt[None, :], 1, _add)
            ddt = tl.reduce(q * a, 1, _add) + hb * u
            du = dy * dv + hb * dt
            d_d += dy * u
            if SOFTPLUS:
                ddt = ddt / (1.0 + tl.exp(-x))  # softplus' = sigmoid
            d_bias += ddt
            tl.store(du_ptr + gofs, du.to(du_ptr.dtype.element_ty), mask=mask_d)
            tl.store(ddl_ptr + gofs, ddt.to(ddl_ptr.dtype.element_ty), mask=mask_d)
            # dB_t = sum_d g dt u, dC_t = sum_d dy s_t: sums over channel blocks -> atomics
            dbt = tl.reduce(g * (dt * u)[:, None], 0, _add)
            dct = tl.reduce(dy[:, None] * s_t, 0, _add)
            nofs = pid_b * L * N + tm * N + offs_n
            tl.atomic_add(db_ptr + nofs, dbt, mask=mask_n)
            tl.atomic_add(dc_ptr + nofs, dct, mask=mask_n)
            h = g * decay
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(da_ptr + pid_b * DCH * N + tile, d_a, mask=mask_dn)
    tl.store(dd_ptr + pid_b * DCH + offs_d, d_d, mask=mask_d)
    tl.store(dbias_ptr + pid_b * DCH + offs_d, d_bias, mask=mask_d)


def interpreted() -> bool:
    """Whether the kernels run in Triton's interpreter and so take CPU tensors: they were built
    with ``TRITON_INTERPRET=1`` (set before triton was imported) and it is still set (triton
    checks it again at launch)."""
    built = not isinstance(_scan_fwd, triton.runtime.JITFunction)
    return built and os.environ.get("TRITON_INTERPRET", "0") == "1"


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not interpreted():
        raise RuntimeError(
            "the Triton scan runs CPU tensors only in Triton's interpreter: set TRITON_INTERPRET=1 "
            "before triton is imported (tests), or use CUDA tensors"
        )


def _block_d(n_chan: int, batch: int, device: torch.device) -> int:
    """Channels per program: the default, smaller when that would leave few programs for the
    GPU's multiprocessors (the sequential time loop relies on many programs in flight)."""
    bd = BLOCK_D
    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        while bd > 8 and batch * triton.cdiv(n_chan, bd) < 4 * sms:
            bd //= 2
    return bd


class _Args:
    """The scan's tensors prepared for the kernels (dummies for absent optional ones)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, block_d):
        self.u, self.delta, self.B, self.C = (last_dim_contiguous(t) for t in (u, delta, B, C))
        self.z = last_dim_contiguous(z) if z is not None else None
        self.A = A.contiguous()
        self.D = D.contiguous() if D is not None else None
        self.bias = delta_bias.contiguous() if delta_bias is not None else None
        self.softplus, self.reverse = bool(delta_softplus), bool(reverse)
        self.batch, self.length, self.n_chan = u.shape
        self.n_state = A.shape[1]
        self.block_n = triton.next_power_of_2(self.n_state)
        self.block_d = block_d or _block_d(self.n_chan, self.batch, u.device)
        self.n_chunks = max(1, triton.cdiv(self.length, CHUNK))
        self.grid = (self.batch, triton.cdiv(self.n_chan, self.block_d))

    def pointers(self):
        dummy = self.A
        z = self.z if self.z is not None else dummy
        return (self.u, self.delta, z, self.B, self.C, self.A,
                self.D if self.D is not None else dummy,
                self.bias if self.bias is not None else dummy)  # fmt: skip

    def strides(self):
        z = self.z if self.z is not None else self.u
        out = []
        for t in (self.u, self.delta, z, self.B, self.C):
            out += [t.stride(0), t.stride(1)]
        return out

    def flags(self):
        return dict(HAS_Z=self.z is not None, HAS_D=self.D is not None,
                    HAS_BIAS=self.bias is not None, SOFTPLUS=self.softplus,
                    REVERSE=self.reverse, CHUNK=CHUNK, BLOCK_D=self.block_d,
                    BLOCK_N=self.block_n)  # fmt: skip


def _forward(args: _Args, save: bool):
    u = args.u
    out = torch.empty(args.batch, args.length, args.n_chan, dtype=u.dtype, device=u.device)
    if save:
        ckpt_shape = (args.batch, args.n_chunks, args.n_chan, args.n_state)
        ckpt = torch.empty(ckpt_shape, dtype=torch.float32, device=u.device)
    else:
        ckpt = torch.empty(1, dtype=torch.float32, device=u.device)
    if args.length > 0:
        kern = _scan_fwd
        kern[args.grid](*args.pointers(), out, ckpt, args.length, args.n_chan, args.n_state,
                        args.n_chunks, *args.strides(), out.stride(0), out.stride(1),
                        SAVE=save, **args.flags())  # fmt: skip
    return out, ckpt


def _backward(args: _Args, ckpt: torch.Tensor, dout: torch.Tensor, dtypes):
    dev = args.u.device
    nb, length, n_chan, n_state = args.batch, args.length, args.n_chan, args.n_state
    dout = last_dim_contiguous(dout)
    du = torch.empty(nb, length, n_chan, dtype=dtypes[0], device=dev)
    ddelta = torch.empty(nb, length, n_chan, dtype=dtypes[1], device=dev)
    has_z = args.z is not None
    dz = torch.empty(nb, length, n_chan, dtype=dtypes[6], device=dev) if has_z else du
    f32 = dict(dtype=torch.float32, device=dev)
    db = torch.zeros(nb, length, n_state, **f32)
    dc = torch.zeros(nb, length, n_state, **f32)
    da = torch.empty(nb, n_chan, n_state, **f32)
    dd = torch.empty(nb, n_chan, **f32)
    dbias = torch.empty(nb, n_chan, **f32)
    n_prog = args.grid[0] * args.grid[1]
    scratch = torch.empty(n_prog * (CHUNK + 1) * args.block_d * args.block_n, **f32)
    if length > 0:
        kern = _scan_bwd
        kern[args.grid](*args.pointers(), ckpt, scratch, dout, du, ddelta, dz, db, dc, da, dd,
                        dbias, length, n_chan, n_state, args.n_chunks, *args.strides(),
                        dout.stride(0), dout.stride(1), **args.flags())  # fmt: skip
    else:
        da.zero_(), dd.zero_(), dbias.zero_()
    return (du, ddelta, da.sum(0), db, dc, dd.sum(0), dz if has_z else None, dbias.sum(0))


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, block_d):
        args = _Args(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, block_d)
        out, ckpt = _forward(args, save=True)
        ctx.args = args
        ctx.save_for_backward(ckpt)
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        ctx.dtypes = tuple(t.dtype if t is not None else None for t in inputs)
        return out

    @staticmethod
    def backward(ctx, dout):
        (ckpt,) = ctx.saved_tensors
        grads = _backward(ctx.args, ckpt, dout, ctx.dtypes)
        ctx.args = None
        out = []
        for g, dtype, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[:8], strict=True):
            out.append(g.to(dtype) if (need and g is not None) else None)
        return (*out, None, None, None)


def _check(u, delta, A, B, C, D, z, delta_bias):
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    if u.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"the Triton scan takes float32/bfloat16/float16 inputs, got {u.dtype}")


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=True, reverse=False, block_d=None):  # fmt: skip
    """Selective scan by the Triton kernels (same contract as ``selective_scan_ref``).

    ``reverse=True`` scans from the last step to the first without flipped copies. ``block_d``
    overrides the channels per program (tests use it to get ragged last blocks)."""
    _check(u, delta, A, B, C, D, z, delta_bias)
    _check_device(u)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _SelectiveScanTriton.apply(*tensors, delta_softplus, reverse, block_d)
    args = _Args(*tensors, delta_softplus, reverse, block_d)
    return _forward(args, save=False)[0]

"""The selective scan of Mamba: one function, a plain reference, and backend dispatch.

Layout (the one the projections produce, so no transposes are needed on the CPU):
    u, delta, z : (batch, length, channels)
    B, C        : (batch, length, d_state)
    A           : (channels, d_state)          (already negative: A = -exp(A_log))
    D, delta_bias : (channels,)

    delta_t = softplus(delta_t + delta_bias)            (if delta_softplus)
    s_t     = exp(delta_t * A) * s_{t-1} + delta_t * B_t * u_t
    y_t     = C_t . s_t + D * u_t ;   y_t *= silu(z_t)   (if z is given)

Backends: ``reference`` (this file, any device; a Python loop over time, only when forced),
``cpu`` (fused numba kernel, ops/scan_cpu.py), ``cuda`` (mamba_ssm's kernels, ops/scan_cuda.py),
``triton`` (Triton kernels, ops/scan_triton.py: CUDA, or CPU tensors in Triton's interpreter),
``torch`` (chunked parallel scan in plain torch, ops/scan_torch.py: any device).

The default picks the fastest one that runs on the tensors' device: CUDA: cuda, else triton, else
torch; CPU: cpu, else torch; any other device (mps, xpu, ...): torch. The variable
``SSAMBA_SCAN`` or the ``backend`` argument forces one (ValueError if it cannot run there).
:func:`scan_backends` reports the choice and why each backend is or is not available.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch
import torch.nn.functional as F

from ssamba.ops.scan_torch import selective_scan_torch

BACKENDS = ("reference", "cpu", "cuda", "triton", "torch")


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, reverse=False,
    initial_state=None, return_last_state=False,
):  # fmt: skip
    """Slow, obviously correct scan in PyTorch (materialises (batch, length, channels, state)).

    ``reverse``: scan from the last step to the first (the time-flipped scan, flipped back).
    ``initial_state`` (batch, channels, state): the state before the first step (zero if None);
    ``return_last_state``: return ``(y, state after the last step)``."""
    if reverse:
        flip = [None if t is None else t.flip(1) for t in (u, delta, B, C, z)]
        u_r, delta_r, B_r, C_r, z_r = flip
        out = selective_scan_ref(u_r, delta_r, A, B_r, C_r, D, z_r, delta_bias, delta_softplus,
                                 initial_state=initial_state,
                                 return_last_state=return_last_state)  # fmt: skip
        return (out[0].flip(1), out[1]) if return_last_state else out.flip(1)
    dtype_out = u.dtype
    work = torch.promote_types(u.dtype, torch.float32)
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)
    if delta_softplus:
        delta = F.softplus(delta)
    decay = torch.exp(delta.unsqueeze(-1) * A)  # (b, l, d, n)
    drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)  # (b, l, d, n)
    state = u.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    if initial_state is not None:
        state = state + initial_state.to(work)
    ys = []
    for t in range(u.shape[1]):
        state = decay[:, t] * state + drive[:, t]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, t]))
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D.to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    return (y.to(dtype_out), state) if return_last_state else y.to(dtype_out)


def _module_missing(name: str) -> str | None:
    """Why ``name`` cannot be imported (None if it can). Imports it: errors inside count."""
    try:
        importlib.import_module(name)
    except ImportError as err:
        return f"{name.rsplit('.', 1)[-1]} cannot be imported ({err})"
    return None


def _triton_interpreted() -> bool:
    """Whether Triton kernels run in the interpreter (then they take CPU tensors)."""
    mod = sys.modules.get("ssamba.ops.scan_triton")
    if mod is not None:
        return mod.interpreted()
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _unavailable(name: str, device: torch.device) -> str | None:
    """Why backend ``name`` cannot run on ``device`` in this process (None if it can)."""
    kind = device.type
    if name in ("reference", "torch"):
        return None
    if name == "cpu":
        if kind != "cpu":
            return f"needs CPU tensors, got {kind}"
        return _module_missing("ssamba.ops.scan_cpu")
    if name == "cuda":
        if kind != "cuda":
            return f"needs CUDA tensors, got {kind}"
        if not torch.cuda.is_available():
            return "torch.cuda is not available"
        return _module_missing("ssamba.ops.scan_cuda")
    if name == "triton":
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed"
        if kind == "cpu":
            if not _triton_interpreted():
                return "CPU tensors run only in Triton's interpreter (TRITON_INTERPRET=1)"
            return None
        if kind != "cuda":
            return f"Triton kernels here run on CUDA devices, got {kind}"
        if not torch.cuda.is_available():
            return "torch.cuda is not available"
        return None
    raise ValueError(f"unknown scan backend {name!r}; choose one of {', '.join(BACKENDS)}")


def _default_backend(device: torch.device) -> str:
    """The fastest backend that runs on ``device``; never the Python-loop reference."""
    if device.type == "cuda":
        order = ("cuda", "triton", "torch")
    elif device.type == "cpu":
        order = ("cpu", "torch")
    else:  # mps, xpu, ...
        order = ("torch",)
    return next(name for name in order if _unavailable(name, device) is None)


def available_backends() -> list[str]:
    """Backends usable in this process on some present device (CPU, and CUDA if there is one)."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return [n for n in BACKENDS if any(_unavailable(n, d) is None for d in devices)]


def resolve_backend(device, backend: str | None = None) -> str:
    """The backend for tensors on ``device``: the argument, else SSAMBA_SCAN, else the fastest
    that runs there (CUDA: mamba_ssm, Triton, torch; CPU: numba, torch; others: torch).

    A forced backend that cannot run on ``device`` raises ValueError saying why."""
    device = torch.device(device)
    backend = backend or os.environ.get("SSAMBA_SCAN") or None
    if backend is None:
        return _default_backend(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    why = _unavailable(backend, device)
    if why is not None:
        raise ValueError(f"scan backend {backend!r} cannot run on {device.type} tensors: {why}")
    return backend


def scan_backends(device=None) -> dict:
    """Which scan backends can run on ``device`` (default: CUDA if present, else CPU), why the
    others cannot, and which one :func:`selective_scan` would use there now.

    Returns ``{"device", "forced" (SSAMBA_SCAN or None), "selected" (a name, or None if the
    forced one cannot run), "error" (why not, or None), "backends": {name: {"available",
    "reason"}}}``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    table = {}
    for name in BACKENDS:
        why = _unavailable(name, device)
        table[name] = {"available": why is None, "reason": why}
    try:
        selected, error = resolve_backend(device), None
    except ValueError as err:
        selected, error = None, str(err)
    forced = os.environ.get("SSAMBA_SCAN") or None
    return {"device": str(device), "forced": forced, "selected": selected, "error": error,
            "backends": table}  # fmt: skip


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=True,
    backend=None,
    reverse=False,
):
    """Run the selective scan (see the module docstring for shapes) on the chosen backend.

    ``reverse=True`` runs the recurrence from the last time step to the first (what a scan of
    the time-flipped inputs gives, flipped back), without flipped copies on the cpu, triton and
    torch backends."""
    name = resolve_backend(u.device, backend)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "cpu":
        from ssamba.ops.scan_cpu import selective_scan_cpu

        return selective_scan_cpu(*args, reverse)
    if name == "cuda":
        from ssamba.ops.scan_cuda import selective_scan_cuda

        if reverse:
            flip = [None if t is None else t.flip(1) for t in (u, delta, B, C, z)]
            u, delta, B, C, z = flip
            y = selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
            return y.flip(1)
        return selective_scan_cuda(*args)
    if name == "triton" and u.dtype != torch.float64:  # the kernels compute in float32
        from ssamba.ops.scan_triton import selective_scan_triton

        return selective_scan_triton(*args, reverse)
    if name in ("triton", "torch"):
        return selective_scan_torch(*args, reverse)
    return selective_scan_ref(*args, reverse)


def selective_scan_many(scans, backend=None, states=None):
    """Several scans, e.g. both directions of a mixer: on the numba backend without autograd in
    one parallel dispatch, otherwise one call each.

    ``scans``: tuples ``(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)``.
    ``states`` (inference): one (batch, D, N) state or None per scan, the state before its first
    step; then the result is ``(outputs, states after the last step)``, so that a long sequence
    can be scanned piece by piece (numba backend; the others fall back to the reference)."""
    scans = list(scans)
    if not scans:
        return ([], []) if states is not None else []
    name = resolve_backend(scans[0][0].device, backend)
    tracked = torch.is_grad_enabled() and any(
        t is not None and torch.is_tensor(t) and t.requires_grad for s in scans for t in s
    )
    if name == "cpu" and not tracked:
        from ssamba.ops.scan_cpu import selective_scan_cpu_many

        return selective_scan_cpu_many(scans, states)
    if states is not None:
        pairs = [selective_scan_ref(*s, initial_state=st, return_last_state=True)
                 for s, st in zip(scans, states, strict=True)]  # fmt: skip
        return [p[0] for p in pairs], [p[1] for p in pairs]
    return [selective_scan(*s[:9], backend=name, reverse=s[9]) for s in scans]

"""The selective scan of Mamba: one function, a plain reference, and backend dispatch.

Layout (the one the projections produce, so no transposes are needed on the CPU):
    u, delta, z : (batch, length, channels)
    B, C        : (batch, length, d_state)
    A           : (channels, d_state)          (already negative: A = -exp(A_log))
    D, delta_bias : (channels,)

    delta_t = softplus(delta_t + delta_bias)            (if delta_softplus)
    s_t     = exp(delta_t * A) * s_{t-1} + delta_t * B_t * u_t
    y_t     = C_t . s_t + D * u_t ;   y_t *= silu(z_t)   (if z is given)

Backends: ``reference`` (this file, any device), ``cpu`` (fused numba kernel, ops/scan_cpu.py),
``cuda`` (mamba_ssm's kernels, ops/scan_cuda.py). The default picks the fastest one available for
the tensors' device; the variable ``SSAMBA_SCAN`` or the ``backend`` argument forces one.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

BACKENDS = ("reference", "cpu", "cuda")


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, reverse=False
):
    """Slow, obviously correct scan in PyTorch (materialises (batch, length, channels, state)).

    ``reverse``: scan from the last step to the first (the time-flipped scan, flipped back)."""
    if reverse:
        flip = [None if t is None else t.flip(1) for t in (u, delta, B, C, z)]
        u_r, delta_r, B_r, C_r, z_r = flip
        y = selective_scan_ref(u_r, delta_r, A, B_r, C_r, D, z_r, delta_bias, delta_softplus)
        return y.flip(1)
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
    ys = []
    for t in range(u.shape[1]):
        state = decay[:, t] * state + drive[:, t]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, t]))
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D.to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype_out)


def _cpu_available() -> bool:
    try:
        from ssamba.ops import scan_cpu  # noqa: F401
    except ImportError:
        return False
    return True


def _cuda_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from ssamba.ops import scan_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """Backends usable in this process (the CUDA one needs mamba_ssm and a GPU)."""
    found = ["reference"]
    if _cpu_available():
        found.append("cpu")
    if _cuda_available():
        found.append("cuda")
    return found


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """The backend for tensors on ``device``: the argument, else SSAMBA_SCAN, else the fastest."""
    backend = backend or os.environ.get("SSAMBA_SCAN") or None
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(
                f"unknown scan backend {backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        if backend == "cpu" and device.type != "cpu":
            raise ValueError(f"scan backend 'cpu' needs CPU tensors, got {device}")
        if backend == "cuda" and (device.type != "cuda" or not _cuda_available()):
            raise ValueError("scan backend 'cuda' needs CUDA tensors and the mamba_ssm package")
        return backend
    if device.type == "cuda" and _cuda_available():
        return "cuda"
    if device.type == "cpu" and _cpu_available():
        return "cpu"
    return "reference"


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
    the time-flipped inputs gives, flipped back), without flipped copies on the CPU backend."""
    name = resolve_backend(u.device, backend)
    if name == "cpu":
        from ssamba.ops.scan_cpu import selective_scan_cpu

        return selective_scan_cpu(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    if name == "cuda":
        from ssamba.ops.scan_cuda import selective_scan_cuda

        if reverse:
            flip = [None if t is None else t.flip(1) for t in (u, delta, B, C, z)]
            u, delta, B, C, z = flip
            y = selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
            return y.flip(1)
        return selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)

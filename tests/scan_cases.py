"""Inputs and error measures shared by the scan tests (every backend against the reference)."""

from __future__ import annotations

import torch

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch, length, chans, n_state, dtype=torch.float32, seed=0, with_d=True,
                with_z=True, with_bias=True, softplus=True, device="cpu"):  # fmt: skip
    """Realistic magnitudes: A negative (as -exp(A_log)), delta around softplus's knee (or,
    without the softplus, already positive, as a time step must be)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(device)

    u = randn(batch, length, chans)
    delta = randn(batch, length, chans) * 0.5 - 1.0
    if not softplus:
        delta = torch.nn.functional.softplus(delta) + 0.5  # + bias (|bias| ~ 0.3) stays > 0
    A = -torch.exp(randn(chans, n_state) * 0.5)
    B = randn(batch, length, n_state)
    C = randn(batch, length, n_state)
    D = randn(chans) if with_d else None
    z = randn(batch, length, chans) if with_z else None
    bias = randn(chans) * 0.3 if with_bias else None
    return [u, delta, A, B, C, D, z, bias]


def rel_err(got, want) -> float:
    """max |got - want| / max |want| (norm-relative: no per-element division by tiny values)."""
    want = want.double()
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def check_against_reference(scan, args, softplus, reverse, tol_y, tol_g, **kw) -> None:
    """``scan(*args, ...)`` against the float64 reference: the output, then every input's
    gradient under the same random output gradient, each within its norm-relative tolerance;
    outputs and gradients keep the inputs' dtype."""
    from ssamba.ops.scan import selective_scan_ref

    leaves = [a.clone().requires_grad_() if a is not None else None for a in args]
    ref = [a.double().requires_grad_() if a is not None else None for a in args]
    y = scan(*leaves, delta_softplus=softplus, reverse=reverse, **kw)
    y_ref = selective_scan_ref(*ref, delta_softplus=softplus, reverse=reverse)
    assert y.dtype == args[0].dtype and y.shape == args[0].shape
    assert rel_err(y, y_ref) < tol_y
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(y.dtype)
    y.backward(grad)
    y_ref.backward(grad.double())
    for name, got, want in zip(NAMES, leaves, ref, strict=True):
        if got is None:
            continue
        assert got.grad is not None and got.grad.dtype == got.dtype, name
        assert rel_err(got.grad, want.grad) < tol_g, name


def tiny_model(seed=0):
    """A depth-2 SSAMBA small enough for interpreted kernels, with no zero-valued parameter."""
    from ssamba.models import create_model

    torch.manual_seed(seed)
    model = create_model("ssamba_tiny", embed_dim=16, depth=2, input_tdim=32, num_classes=3,
                         pretrain_heads=False, drop_path=0.0)  # fmt: skip
    with torch.no_grad():  # non-trivial values everywhere (zero biases by default)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.train()

"""The Triton kernels (ops/scan_triton.py, ops/conv_triton.py) in Triton's interpreter on CPU
tensors, against the float64 reference: scan values and every gradient (both directions, ragged
channel blocks, d_state not a power of two, optional arguments, low precision), the fused conv +
silu, and a depth-2 SSAMBA training step on the triton backend against the numba one.

The interpreter must be chosen before triton is first imported, and triton checks the variable
again at each launch. So this module sets ``TRITON_INTERPRET=1`` while it imports (only where no
GPU is present and triton is not imported yet), puts it back at once, and sets it again only
while its own tests run (a module fixture): other test modules and their subprocesses never see
it. Where the kernels are compiled (a GPU machine), tests/test_scan_gpu.py covers them and this
module is skipped."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from scan_cases import check_against_reference, make_inputs, rel_err, tiny_model

_SET_INTERPRET = "triton" not in sys.modules and not torch.cuda.is_available()
_OLD_INTERPRET = os.environ.get("TRITON_INTERPRET")
if _SET_INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
    from ssamba.ops import conv_triton, scan_triton  # noqa: E402, F401 (built in the interpreter)
finally:
    if _SET_INTERPRET:
        if _OLD_INTERPRET is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _OLD_INTERPRET

from ssamba.models import mamba as mamba_mod  # noqa: E402
from ssamba.ops import causal_depthwise_conv1d, scan_backends, selective_scan  # noqa: E402
from ssamba.ops.conv_triton import conv1d_silu_triton  # noqa: E402
from ssamba.ops.scan import resolve_backend, selective_scan_ref  # noqa: E402
from ssamba.ops.scan_triton import selective_scan_triton  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _interpreter():
    """TRITON_INTERPRET=1 while this module's tests run (triton asserts it at launch)."""
    old = os.environ.get("TRITON_INTERPRET")
    if _SET_INTERPRET:
        os.environ["TRITON_INTERPRET"] = "1"
    yield
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


if not (_SET_INTERPRET or scan_triton.interpreted()):
    pytest.skip("Triton kernels are compiled here: see tests/test_scan_gpu.py",
                allow_module_level=True)  # fmt: skip


def _check_against_reference(args, softplus, reverse, tol_y, tol_g, block_d):
    check_against_reference(
        selective_scan_triton, args, softplus, reverse, tol_y, tol_g, block_d=block_d
    )


# Paired rather than a full product (the interpreter runs ~20 ms per step and program):
# every L, batch 1 and 3, both directions, each optional argument on and off, channels not a
# multiple of the block, d_state 5 (padded to 8), chunk boundaries crossed (CHUNK = 64).
# (batch, length, chans, n_state, block_d, reverse, with_d, with_z, with_bias, softplus)
CASES = [
    (3, 1, 40, 16, 32, False, True, True, True, True),
    (1, 7, 20, 5, 16, True, False, False, False, True),
    (1, 64, 24, 8, 16, False, True, True, False, False),
    (3, 64, 20, 4, 32, True, False, True, True, True),
    (1, 129, 12, 16, 8, True, True, False, True, True),
    (1, 300, 10, 4, 16, False, True, True, True, True),
]


@pytest.mark.parametrize(
    ("batch", "length", "chans", "n_state", "block_d", "reverse", "with_d", "with_z",
     "with_bias", "softplus"),
    CASES,
)  # fmt: skip
def test_triton_scan_matches_reference_fp32(batch, length, chans, n_state, block_d, reverse,
                                            with_d, with_z, with_bias, softplus):  # fmt: skip
    args = make_inputs(batch, length, chans, n_state, seed=length + chans, with_d=with_d,
                       with_z=with_z, with_bias=with_bias, softplus=softplus)  # fmt: skip
    _check_against_reference(args, softplus, reverse, 1e-5, 1e-5, block_d)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.bfloat16, 1e-2), (torch.float16, 2e-3)])
def test_triton_scan_low_precision(dtype, tol):
    """Low-precision u, delta, B, C, z (A, D, delta_bias stay float32, as in the model): the
    reference sees the same rounded inputs, so the error is the rounding of y and the grads."""
    args = make_inputs(1, 33, 20, 8, seed=3)
    args = [a.to(dtype) if i in (0, 1, 3, 4, 6) else a for i, a in enumerate(args)]
    _check_against_reference(args, True, True, tol, tol, 16)


def test_triton_scan_strided_views_and_no_grad():
    """z, B, C as views with a row stride (as the mixer passes them) are read in place."""
    args = make_inputs(2, 20, 12, 4, seed=4)
    zx = torch.randn(2, 20, 24)
    bc = torch.randn(2, 20, 11)
    args[6] = zx[..., 12:]
    args[3], args[4] = bc[..., 1:5], bc[..., 6:10]
    assert not args[6].is_contiguous() and not args[3].is_contiguous()
    with torch.no_grad():
        got = selective_scan_triton(*args, block_d=8)
    assert rel_err(got, selective_scan_ref(*[a.double() for a in args])) < 1e-5


@pytest.mark.parametrize(("reverse", "length"), [(False, 1), (True, 5), (False, 70), (True, 70)])
def test_triton_conv_silu_values_and_grads(reverse, length):
    g = torch.Generator().manual_seed(length)
    xz = torch.randn(2, length, 90, generator=g)
    x = xz[..., 10:80].clone().requires_grad_()  # 70 channels: two blocks, the second ragged
    x_view = xz[..., 10:80]  # the strided slice itself, as the mixer passes it
    w = torch.randn(70, 1, 4, generator=g).requires_grad_()
    b = torch.randn(70, generator=g).requires_grad_()
    with torch.no_grad():
        got_view = conv1d_silu_triton(x_view, w, b, reverse)
    got = conv1d_silu_triton(x, w, b, reverse)
    x2, w2, b2 = (t.detach().double().requires_grad_() for t in (x, w, b))
    want = torch.nn.functional.silu(causal_depthwise_conv1d(x2, w2, b2, reverse))
    assert rel_err(got_view, want) < 1e-6 and rel_err(got, want) < 1e-6
    gout = torch.randn(want.shape, generator=g)
    got.backward(gout)
    want.backward(gout.double())
    for a, c in ((x, x2), (w, w2), (b, b2)):
        assert rel_err(a.grad, c.grad) < 1e-5


def test_dispatcher_forced_triton_on_cpu(monkeypatch):
    args = make_inputs(1, 9, 8, 4, seed=2)
    want = selective_scan_ref(*[a.double() for a in args], reverse=True)
    assert rel_err(selective_scan(*args, backend="triton", reverse=True), want) < 1e-5
    monkeypatch.setenv("SSAMBA_SCAN", "triton")
    assert resolve_backend(torch.device("cpu")) == "triton"
    assert scan_backends("cpu")["selected"] == "triton"
    monkeypatch.delenv("SSAMBA_SCAN")
    # never chosen by default for CPU tensors, but listed as runnable there (interpreter)
    assert resolve_backend(torch.device("cpu")) != "triton"
    assert scan_backends("cpu")["backends"]["triton"]["available"]


def _training_step(model, backend, monkeypatch):
    monkeypatch.setenv("SSAMBA_SCAN", backend)
    fbank = torch.randn(2, 32, 128, generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(fbank), torch.tensor([0, 2]))
    loss.backward()
    monkeypatch.delenv("SSAMBA_SCAN")
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_training_step_triton_backend_matches_cpu(monkeypatch):
    pytest.importorskip("ssamba.ops.scan_cpu")
    model = tiny_model()
    calls = []
    real = scan_triton.selective_scan_triton
    monkeypatch.setattr(scan_triton, "selective_scan_triton",
                        lambda *a, **k: calls.append(1) or real(*a, **k))  # fmt: skip

    def no_flips(*a, **k):  # the fused path must be taken: no reference mixer, no flips
        raise AssertionError("reference_forward called")

    monkeypatch.setattr(mamba_mod.BiMambaMixer, "reference_forward", no_flips)
    loss_cpu, grads_cpu = _training_step(model, "cpu", monkeypatch)
    loss_t, grads_t = _training_step(model, "triton", monkeypatch)
    assert len(calls) == 4  # 2 layers x 2 branches, all through the Triton kernels
    assert abs(loss_t.item() - loss_cpu.item()) <= 1e-5 * abs(loss_cpu.item())
    assert grads_t.keys() == grads_cpu.keys()
    for n, g in grads_cpu.items():
        assert rel_err(grads_t[n], g) < 1e-5, n

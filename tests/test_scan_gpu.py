"""CUDA-only: every GPU scan backend (triton, torch, and cuda where mamba_ssm is installed)
against the float64 reference on the GPU, values and all gradients, float32 and bfloat16; the
Triton conv; and a depth-2 SSAMBA training step on CUDA with the triton vs the torch backend.

triton is imported only inside the tests (importing it at collection would fix its mode before
tests/test_scan_triton.py can choose the interpreter on machines without a GPU)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_MAMBA = importlib.util.find_spec("mamba_ssm") is not None


def make_inputs(batch, length, chans, n_state, seed=0, device="cuda"):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device)

    u = randn(batch, length, chans)
    delta = randn(batch, length, chans) * 0.5 - 1.0
    A = -torch.exp(randn(chans, n_state) * 0.5)
    B, C = randn(batch, length, n_state), randn(batch, length, n_state)
    D, z, bias = randn(chans), randn(batch, length, chans), randn(chans) * 0.3
    return [u, delta, A, B, C, D, z, bias]


def _rel(got, want):
    want = want.double()
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _backends():
    names = ["torch"]
    if HAS_TRITON:
        names.append("triton")
    if HAS_MAMBA:
        names.append("cuda")
    return names


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize(
    ("batch", "length", "chans", "reverse"),
    [(1, 1, 40, False), (3, 129, 200, True), (2, 1000, 96, False)],
)
def test_backend_matches_reference_on_gpu(backend, dtype, tol, batch, length, chans, reverse):
    from ssamba.ops.scan import selective_scan, selective_scan_ref

    args = make_inputs(batch, length, chans, 16, seed=length)
    args = [a.to(dtype) if i in (0, 1, 3, 4, 6) else a for i, a in enumerate(args)]
    leaves = [a.clone().requires_grad_() for a in args]
    ref = [a.double().requires_grad_() for a in args]
    y = selective_scan(*leaves, backend=backend, reverse=reverse)
    y_ref = selective_scan_ref(*ref, reverse=reverse)
    assert y.dtype == dtype and y.device.type == "cuda"
    assert _rel(y, y_ref) <= tol
    grad = torch.randn(y.shape, device="cuda").to(dtype)
    y.backward(grad)
    y_ref.backward(grad.double())
    for name, got, want in zip(NAMES, leaves, ref, strict=True):
        assert got.grad is not None and got.grad.dtype == got.dtype, (backend, name)
        assert _rel(got.grad, want.grad) <= (tol if dtype == torch.float32 else 2 * tol), name


def test_default_on_cuda_is_never_the_reference(monkeypatch):
    from ssamba.ops import scan_backends

    monkeypatch.delenv("SSAMBA_SCAN", raising=False)
    info = scan_backends("cuda")
    assert info["selected"] in ("cuda", "triton", "torch")
    assert info["selected"] == ("cuda" if HAS_MAMBA else "triton" if HAS_TRITON else "torch")


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("reverse", [False, True])
def test_triton_conv_on_gpu(reverse):
    from ssamba.ops import causal_depthwise_conv1d
    from ssamba.ops.conv_triton import conv1d_silu_triton

    xz = torch.randn(2, 300, 200, device="cuda")
    x = xz[..., 10:110].clone().requires_grad_()
    w = torch.randn(100, 1, 4, device="cuda", requires_grad=True)
    b = torch.randn(100, device="cuda", requires_grad=True)
    got = conv1d_silu_triton(x, w, b, reverse)
    x2, w2, b2 = (t.detach().double().requires_grad_() for t in (x, w, b))
    want = torch.nn.functional.silu(causal_depthwise_conv1d(x2, w2, b2, reverse))
    assert _rel(got, want) < 1e-5
    g = torch.randn(want.shape, device="cuda")
    got.backward(g)
    want.backward(g.double())
    for a, c in ((x, x2), (w, w2), (b, b2)):
        assert _rel(a.grad, c.grad) < 1e-5


def _training_step(backend, monkeypatch):
    from ssamba.models import create_model

    torch.manual_seed(0)
    model = create_model("ssamba_tiny", depth=2, input_tdim=64, num_classes=3,
                         pretrain_heads=False, drop_path=0.0).cuda().train()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    monkeypatch.setenv("SSAMBA_SCAN", backend)
    fbank = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(1)).cuda()
    loss = torch.nn.functional.cross_entropy(model(fbank), torch.tensor([0, 2], device="cuda"))
    loss.backward()
    monkeypatch.delenv("SSAMBA_SCAN")
    return loss.item(), {n: p.grad.double() for n, p in model.named_parameters()}


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_training_step_triton_matches_torch_on_gpu(monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 GEMMs would differ by ~1e-3
    torch.backends.cudnn.allow_tf32 = False
    loss_t, grads_t = _training_step("triton", monkeypatch)
    loss_p, grads_p = _training_step("torch", monkeypatch)
    assert abs(loss_t - loss_p) <= 1e-5 * abs(loss_p)
    for n, g in grads_p.items():
        assert _rel(grads_t[n], g) < 1e-4, n

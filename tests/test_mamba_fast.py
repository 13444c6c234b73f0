"""The fast CPU path of the SSAMBA mixer/encoder (fused conv + silu, reverse scans, mirrored
layers, no flipped copies) against the plain formulation: values and gradients, float32."""

from __future__ import annotations

import pytest
import torch

from ssamba.models.mamba import (
    BiMambaMixer,
    MambaBlock,
    causal_depthwise_conv1d,
    init_mamba_branch,
)

pytest.importorskip("ssamba.ops.scan_cpu")
from ssamba.ops.conv_cpu import conv1d_silu_cpu  # noqa: E402


def _rel(got, want):
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _mixer(dim=32, seed=0):
    torch.manual_seed(seed)
    m = BiMambaMixer(dim)
    for branch in (m.forward_branch, m.backward_branch):
        init_mamba_branch(branch)  # A_log and D are left uninitialised by the constructor
    with torch.no_grad():  # non-trivial values everywhere (the default init has zero biases)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [1, 3, 70])
def test_conv_silu_kernel_values_and_grads(reverse, length):
    g = torch.Generator().manual_seed(length)
    xz = torch.randn(2, length, 24, generator=g, dtype=torch.float64).float()
    x = xz[..., 4:20]  # a channel slice, as the mixer passes it (no copy is made)
    w = torch.randn(16, 1, 4, generator=g).requires_grad_()
    b = torch.randn(16, generator=g).requires_grad_()
    xl = x.clone().requires_grad_()
    with torch.no_grad():
        got_nograd = conv1d_silu_cpu(x, w, b, reverse)
    got = conv1d_silu_cpu(xl, w, b, reverse)
    w2, b2, x2 = (t.detach().clone().requires_grad_() for t in (w, b, x))
    if reverse:  # the definition: causal conv of the reversed input, reversed back
        want = torch.nn.functional.silu(causal_depthwise_conv1d(x2.flip(1), w2, b2)).flip(1)
    else:
        want = torch.nn.functional.silu(causal_depthwise_conv1d(x2, w2, b2))
    assert _rel(got_nograd, want) < 1e-6 and _rel(got, want) < 1e-6
    gout = torch.randn(want.shape, generator=g)
    got.backward(gout)
    want.backward(gout)
    for a, c in ((xl, x2), (w, w2), (b, b2)):
        assert _rel(a.grad, c.grad) < 1e-5


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize(("batch", "length"), [(1, 1), (2, 5), (3, 67)])
def test_mixer_fast_matches_reference(mirrored, batch, length):
    m = _mixer(seed=length)
    h = torch.randn(batch, length, 32, generator=torch.Generator().manual_seed(1))
    h_ref = h.flip(1) if mirrored else h
    with torch.no_grad():
        want = m.reference_forward(h_ref)
        want = want.flip(1) if mirrored else want
        got = m(h, mirrored=mirrored)
    assert _rel(got, want) < 1e-5
    # gradients w.r.t. the input and every parameter
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    hl = h.clone().requires_grad_()
    (m(hl, mirrored=mirrored) * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    hr = h.clone().requires_grad_()
    out = m.reference_forward(hr.flip(1) if mirrored else hr)
    ((out.flip(1) if mirrored else out) * g).sum().backward()
    assert _rel(hl.grad, hr.grad) < 1e-5
    for n, p in m.named_parameters():
        assert _rel(grads[n], p.grad) < 1e-5, n


def test_block_mirrored_is_flipped_block():
    m = _mixer(seed=3)
    block = MambaBlock(32, m, "layernorm", 0.0, False).eval()
    h, r = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    with torch.no_grad():
        got_h, got_r = block(h, r, mirrored=True)
        want_h, want_r = block(h.flip(1), r.flip(1))
    assert _rel(got_h, want_h.flip(1)) < 1e-5
    torch.testing.assert_close(got_r, want_r.flip(1))


def _encoder_pair(depth=4, seed=0):
    from ssamba.models import create_model

    torch.manual_seed(seed)
    model = create_model("ssamba_tiny", embed_dim=32, depth=depth, input_tdim=80,
                         pretrain_heads=False, drop_path=0.0)  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _plain_encoder_forward(enc, tokens):
    """The encoder loop as the official code writes it: flipped copies, reference mixers."""
    return enc.reference_forward(tokens)


@pytest.mark.parametrize("batch", [1, 2])
def test_encoder_fast_matches_plain_values_and_grads(batch):
    model = _encoder_pair()
    enc = model.encoder.train()  # drop_path is 0: deterministic
    tokens = torch.randn(batch, 31, 32, generator=torch.Generator().manual_seed(batch))
    t1 = tokens.clone().requires_grad_()
    t2 = tokens.clone().requires_grad_()
    got = enc(t1)
    want = _plain_encoder_forward(enc, t2)
    assert _rel(got.detach(), want.detach()) < 1e-5
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(9))
    (got * g).sum().backward()
    fast = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
    enc.zero_grad()
    (want * g).sum().backward()
    assert _rel(t1.grad, t2.grad) < 1e-5
    for n, p in enc.named_parameters():
        if p.grad is not None:
            assert _rel(fast[n], p.grad) < 2e-5, n
    enc.eval()
    with torch.no_grad():
        assert _rel(enc(tokens), _plain_encoder_forward(enc, tokens)) < 1e-5


def test_reference_backend_env_uses_plain_path(monkeypatch):
    m = _mixer(seed=5)
    h = torch.randn(2, 11, 32)
    with torch.no_grad():
        fast = m(h, mirrored=True)
        monkeypatch.setenv("SSAMBA_SCAN", "reference")
        plain = m(h, mirrored=True)
    assert _rel(fast, plain) < 1e-5

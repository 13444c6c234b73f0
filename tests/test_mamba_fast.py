"""The fast CPU path of the SSAMBA mixer/encoder (fused conv + silu, reverse scans, mirrored
layers, no flipped copies, inference in pieces) against the plain formulation: values and
gradients, float32."""

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
from scan_cases import make_inputs  # noqa: E402
from ssamba.ops.conv_cpu import conv1d_silu_cpu, conv1d_silu_window_cpu  # noqa: E402
from ssamba.ops.scan import selective_scan_many, selective_scan_ref  # noqa: E402


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


# ---------------------------------------------------------------- inference in pieces


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_kernel_carries_state_across_pieces(reverse):
    """Two pieces with the state carried equal one scan of the whole, and the last state is the
    reference's (the second piece in scan order is the earlier one in time when reversed)."""
    args = make_inputs(2, 37, 40, 16, seed=3)  # 40 channels: a narrow last channel block
    cut = 15
    with torch.no_grad():
        want, want_state = selective_scan_ref(*args, reverse=reverse, return_last_state=True)

        def piece(lo, hi, state):
            part = [a[:, lo:hi] if i in (0, 1, 3, 4, 6) else a for i, a in enumerate(args)]
            (y,), (last,) = selective_scan_many([(*part, True, reverse)], states=[state])
            return y, last

        first, second = ((cut, 37), (0, cut)) if reverse else ((0, cut), (cut, 37))
        y1, s1 = piece(*first, None)
        y2, s2 = piece(*second, s1)
        _, s1_ref = selective_scan_ref(*[a[:, first[0] : first[1]] if i in (0, 1, 3, 4, 6)
                                         else a for i, a in enumerate(args)],
                                       reverse=reverse, return_last_state=True)  # fmt: skip
    got = torch.cat([y2, y1] if reverse else [y1, y2], dim=1)
    assert _rel(got, want) < 1e-5
    assert _rel(s1, s1_ref) < 1e-5 and _rel(s2, want_state) < 1e-5
    assert s2.shape == (2, 40, 16)


def test_reference_scan_state_split_in_two():
    """The reference's own state carry: scanning [0, t) then [t, L) from its state is the scan."""
    args = make_inputs(1, 20, 8, 4, dtype=torch.float64, seed=4)
    time_args = (0, 1, 3, 4, 6)

    def cut(lo, hi):
        return [a[:, lo:hi] if i in time_args else a for i, a in enumerate(args)]

    y1, s1 = selective_scan_ref(*cut(0, 7), return_last_state=True)
    y2 = selective_scan_ref(*cut(7, 20), initial_state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), selective_scan_ref(*args))


@pytest.mark.parametrize("reverse", [False, True])
def test_conv_window_equals_whole_sequence(reverse):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 30, 24, generator=g)[..., 4:20]  # a channel slice, as the mixer has
    w, b = torch.randn(16, 1, 4, generator=g), torch.randn(16, generator=g)
    whole = conv1d_silu_cpu(x, w, b, reverse)
    for t0, t1 in ((0, 10), (10, 20), (20, 30), (12, 13)):
        lo, hi = max(0, t0 - 3), min(30, t1 + 3)  # the piece and its K - 1 neighbours
        got = conv1d_silu_window_cpu(x[:, lo:hi], w, b, reverse, t0 - lo, t1 - t0)
        assert _rel(got, whole[:, t0:t1]) < 1e-6
    with pytest.raises(ValueError, match="window"):
        conv1d_silu_window_cpu(x, w, b, reverse, 25, 10)


@pytest.mark.parametrize("mirrored", [False, True])
@pytest.mark.parametrize(
    ("batch", "length", "chunk"),
    [(1, 8, 8), (2, 15, 8), (3, 16, 8), (2, 19, 8), (3, 17, 4), (1, 11, 2), (2, 9, 1)],
)
def test_mixer_in_pieces_matches_reference(mirrored, batch, length, chunk, monkeypatch):
    """Whole (under twice the piece size) and in pieces (from twice on: 2, 2 uneven, 4, 5 and
    9 pieces; pieces narrower than the conv's reach)."""
    m = _mixer(seed=length + chunk)
    m.inference_chunk = chunk
    calls = []
    pieces = BiMambaMixer._infer_pieces
    monkeypatch.setattr(BiMambaMixer, "_infer_pieces", lambda *a: calls.append(1) or pieces(*a))
    h = torch.randn(batch, length, 32, generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        want = m.reference_forward(h.flip(1) if mirrored else h)
        want = want.flip(1) if mirrored else want
        got = m(h, mirrored=mirrored)
        into = torch.ones_like(want)
        m.infer(h, mirrored=mirrored, out=into)
    assert _rel(got, want) < 1e-5
    assert _rel(into - 1, want) < 1e-5
    assert len(calls) == (2 if length >= 2 * chunk else 0)


def test_unidirectional_mixer_in_pieces():
    torch.manual_seed(2)
    m = BiMambaMixer(32, bidirectional=False)
    init_mamba_branch(m.forward_branch)
    m.inference_chunk = 4
    h = torch.randn(2, 13, 32)
    with torch.no_grad():
        assert _rel(m(h), m.reference_forward(h)) < 1e-5


@pytest.mark.parametrize("chunk", [5, 64])
def test_encoder_inference_in_pieces_matches_plain(chunk):
    """The eval encoder without autograd (in-place residual streams, per-piece norms, mixers
    in pieces) against the plain loop, per-pair streams included."""
    enc = _encoder_pair().encoder.eval()
    for layer in enc.layers:
        layer.mixer.inference_chunk = chunk
    tokens = torch.randn(2, 23, 32, generator=torch.Generator().manual_seed(4))
    before = tokens.clone()
    with torch.no_grad():
        got, streams = enc(tokens, return_layers=True)
        want = _plain_encoder_forward(enc, tokens)
    want_streams = enc(tokens, return_layers=True)[1]  # autograd on: the training-path loop
    assert torch.equal(tokens, before)  # the input is never written to
    assert _rel(got, want) < 1e-5
    assert len(streams) == len(want_streams) == 2
    for s, w in zip(streams, want_streams, strict=True):
        assert _rel(s, w.detach()) < 1e-5


def test_training_graph_keeps_few_full_size_tensors():
    """What the training graph keeps of (B, L, d_inner) size or more: x (its conv's input), the
    two conv outputs, the two pre-gate scan outputs and out_proj's input: 6. The conv + silu
    keeps no pre-activation (its backward recomputes it) and in_proj's output is not kept as
    one (B, L, 2 d_inner) tensor (the scans' own inputs, z among them, are not seen by the
    hooks). The code before this count kept 8."""
    m = _mixer(seed=6)
    h = torch.randn(2, 64, 32, requires_grad=True)
    full = 2 * 64 * 64 * 4  # B * L * d_inner float32 bytes
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(h)
    assert sum(n >= full for n in saved.values()) <= 6

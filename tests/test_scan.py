"""The selective scan: the reference against a naive loop, the numba CPU backend against the
reference (values and every gradient), gradcheck in float64, and the backend dispatcher."""

from __future__ import annotations

import math
import re

import pytest
import torch

from scan_cases import NAMES, check_against_reference, make_inputs, rel_err
from ssamba.ops import scan as scan_mod
from ssamba.ops.scan import selective_scan, selective_scan_ref

scan_cpu = pytest.importorskip("ssamba.ops.scan_cpu")


def naive_scan(u, delta, A, B, C, D, z, bias, softplus):
    """Triple loop straight from the equations (float64, tiny sizes only)."""
    nb, length, chans = u.shape
    n_state = A.shape[1]
    y = torch.zeros(nb, length, chans, dtype=torch.float64)
    for b in range(nb):
        for d in range(chans):
            s = [0.0] * n_state
            for t in range(length):
                x = float(delta[b, t, d]) + (float(bias[d]) if bias is not None else 0.0)
                dt = (x if x > 20 else math.log1p(math.exp(x))) if softplus else x
                acc = 0.0
                for n in range(n_state):
                    decay = math.exp(dt * float(A[d, n]))
                    s[n] = decay * s[n] + dt * float(B[b, t, n]) * float(u[b, t, d])
                    acc += float(C[b, t, n]) * s[n]
                if D is not None:
                    acc += float(D[d]) * float(u[b, t, d])
                if z is not None:
                    zv = float(z[b, t, d])
                    acc *= zv / (1.0 + math.exp(-zv))
                y[b, t, d] = acc
    return y


@pytest.mark.parametrize("softplus", [True, False])
@pytest.mark.parametrize("optional", [True, False])
def test_reference_matches_naive_loop(softplus, optional):
    args = make_inputs(2, 5, 3, 4, torch.float64, seed=1, with_d=optional, with_z=optional,
                       with_bias=optional, softplus=softplus)  # fmt: skip
    got = selective_scan_ref(*args, delta_softplus=softplus)
    want = naive_scan(*args, softplus)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


CASES = [
    # (length, chans, with_d, with_z, with_bias, softplus)
    (1, 16, True, True, True, True),
    (7, 40, False, False, False, True),
    (129, 40, True, True, True, False),
    (129, 16, True, False, True, True),
    (64, 384, False, True, False, False),
]


@pytest.mark.parametrize(("length", "chans", "with_d", "with_z", "with_bias", "softplus"), CASES)
def test_cpu_matches_reference_fp32(length, chans, with_d, with_z, with_bias, softplus):
    """float32 kernel vs the float64 reference: outputs and all eight gradients to ~1e-5."""
    args = make_inputs(2, length, chans, 16, seed=length + chans, with_d=with_d, with_z=with_z,
                       with_bias=with_bias, softplus=softplus)  # fmt: skip
    assert args[0].dtype == torch.float32
    check_against_reference(scan_cpu.selective_scan_cpu, args, softplus, False, 1e-5, 2e-5)


@pytest.mark.parametrize("softplus", [True, False])
def test_cpu_values_long_wide_fp32(softplus):
    """Realistic size (the autograd reference is too slow here for gradients)."""
    args = make_inputs(2, 1000, 384, 16, seed=11, softplus=softplus)
    with torch.no_grad():
        got = scan_cpu.selective_scan_cpu(*args, delta_softplus=softplus)
        want = selective_scan_ref(*[a.double() for a in args], delta_softplus=softplus)
    assert rel_err(got, want) < 1e-5


def test_cpu_no_grad_matches_and_noncontiguous():
    args = make_inputs(3, 70, 24, 8, seed=3)
    # non-contiguous views of the same values
    u_t = args[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert not u_t.is_contiguous()
    with torch.no_grad():
        got = scan_cpu.selective_scan_cpu(u_t, *args[1:])
    want = selective_scan_ref(*[a.double() if a is not None else None for a in args])
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize(
    ("batch", "length", "chans", "n_state", "softplus", "optional"),
    [
        (1, 1, 3, 2, True, True),
        (2, 5, 17, 3, True, True),
        (1, 9, 5, 4, False, True),
        (2, 4, 16, 2, True, False),
    ],
)
def test_cpu_gradcheck_fp64(batch, length, chans, n_state, softplus, optional):
    args = make_inputs(batch, length, chans, n_state, torch.float64, seed=chans, with_d=optional,
                       with_z=optional, with_bias=optional, softplus=softplus)  # fmt: skip
    leaves = tuple(a.requires_grad_() if a is not None else None for a in args)

    def fn(*xs):
        return scan_cpu.selective_scan_cpu(*xs, delta_softplus=softplus)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_cpu_long_sequence_crosses_many_chunks():
    """L spanning many checkpoint chunks with a ragged last one; only u requires grad."""
    args = make_inputs(1, 1100, 20, 16, seed=5)
    u = args[0].clone().requires_grad_()
    y = scan_cpu.selective_scan_cpu(u, *args[1:])
    y.sum().backward()
    u_ref = args[0].double().requires_grad_()
    y_ref = selective_scan_ref(u_ref, *[a.double() if a is not None else None for a in args[1:]])
    y_ref.sum().backward()
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(u.grad, u_ref.grad) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_dispatcher_backend_argument(backend):
    args = make_inputs(1, 9, 8, 4, seed=2)
    got = selective_scan(*args, backend=backend)
    torch.testing.assert_close(got, selective_scan_ref(*args), rtol=1e-5, atol=1e-5)


def test_dispatcher_env_var(monkeypatch):
    calls = []

    def fake_cpu(*args):
        calls.append("cpu")
        return selective_scan_ref(*args)

    monkeypatch.setattr(scan_cpu, "selective_scan_cpu", fake_cpu)
    args = make_inputs(1, 4, 8, 4, seed=4)
    monkeypatch.setenv("SSAMBA_SCAN", "reference")
    selective_scan(*args)
    assert calls == []
    monkeypatch.setenv("SSAMBA_SCAN", "cpu")
    selective_scan(*args)
    assert calls == ["cpu"]
    monkeypatch.delenv("SSAMBA_SCAN")
    assert scan_mod.resolve_backend(torch.device("cpu")) == "cpu"


def test_dispatcher_unknown_backend(monkeypatch):
    args = make_inputs(1, 4, 8, 4)
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(*args, backend="fortran")
    monkeypatch.setenv("SSAMBA_SCAN", "nope")
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(*args)


def test_available_backends_lists_cpu():
    assert {"reference", "cpu"} <= set(scan_mod.available_backends())


@pytest.mark.parametrize("length", [1, 70, 129])
def test_cpu_reverse_matches_flipped_reference(length):
    """reverse=True: the scan of the time-flipped inputs, flipped back (values and gradients)."""
    args = make_inputs(2, length, 40, 16, seed=length)
    leaves = [a.clone().requires_grad_() for a in args]
    ref = [a.double().requires_grad_() for a in args]
    y = scan_cpu.selective_scan_cpu(*leaves, reverse=True)
    flipped = [t.flip(1) if i in (0, 1, 3, 4, 6) else t for i, t in enumerate(ref)]
    y_ref = selective_scan_ref(*flipped).flip(1)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(selective_scan(*args, backend="reference", reverse=True), y_ref) < 1e-5
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    y.backward(grad)
    y_ref.backward(grad.double())
    for name, got, want in zip(NAMES, leaves, ref, strict=True):
        assert rel_err(got.grad, want.grad) < 2e-5, name


@pytest.mark.parametrize("reverse", [False, True])
def test_cpu_backward_several_channel_groups(reverse):
    """The backward's work items are groups of ``GROUP`` blocks of ``BWD_LANES`` channels; dB and
    dC add up one partial per group. 200 channels: two groups, the second one ragged (its last
    block 8 channels wide); 130 steps: a ragged last chunk."""
    chans = scan_cpu.GROUP * scan_cpu.BWD_LANES + 72
    assert scan_cpu._n_groups(chans) == 2 and chans % scan_cpu.BWD_LANES
    args = make_inputs(2, 130, chans, 16, seed=21)
    check_against_reference(scan_cpu.selective_scan_cpu, args, True, reverse, 1e-5, 2e-5)


@pytest.mark.parametrize("chans", [48, 200])
def test_cpu_threads_give_identical_results(chans):
    """Work items are independent and their partial sums are added in a fixed order: 1 and 2
    threads must agree bit for bit (one channel group, and two)."""
    args = make_inputs(3, 100, chans, 16, seed=8)
    old = torch.get_num_threads()
    try:
        outs = []
        for th in (1, 2):
            torch.set_num_threads(th)
            leaves = [a.clone().requires_grad_() for a in args]
            y = scan_cpu.selective_scan_cpu(*leaves)
            y.sum().backward()
            outs.append([y.detach()] + [p.grad for p in leaves])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------- backend choice by device


@pytest.fixture
def fake_availability(monkeypatch):
    """Pretend a chosen set of backends can run (for devices this machine does not have)."""

    def install(*runnable):
        def unavailable(name, device):
            if name not in scan_mod.BACKENDS:
                raise ValueError(f"unknown scan backend {name!r}")
            return None if name in runnable or name == "reference" else "faked away"

        monkeypatch.setattr(scan_mod, "_unavailable", unavailable)

    monkeypatch.delenv("SSAMBA_SCAN", raising=False)
    return install


@pytest.mark.parametrize(
    ("runnable", "device", "want"),
    [
        (("cpu", "cuda", "triton", "torch"), "cuda", "cuda"),
        (("cpu", "triton", "torch"), "cuda", "triton"),
        (("cpu", "torch"), "cuda", "torch"),
        (("cpu", "cuda", "triton", "torch"), "cpu", "cpu"),
        (("cuda", "triton", "torch"), "cpu", "torch"),
        (("cpu", "cuda", "triton", "torch"), "mps", "torch"),
        (("cpu", "cuda", "triton", "torch"), "xpu", "torch"),
    ],
)
def test_default_backend_by_device(fake_availability, runnable, device, want):
    fake_availability(*runnable)
    assert scan_mod.resolve_backend(torch.device(device)) == want
    assert scan_mod.scan_backends(device)["selected"] == want


@pytest.mark.parametrize("device", ["cuda", "mps", "xpu", "cpu"])
def test_no_accelerator_tensor_reaches_the_reference_by_default(fake_availability, device):
    """Whatever is installed, only SSAMBA_SCAN=reference (or the argument) picks the loop."""
    import itertools

    optional = ("cpu", "cuda", "triton")
    for k in range(len(optional) + 1):
        for subset in itertools.combinations(optional, k):
            fake_availability(*subset, "torch")
            assert scan_mod.resolve_backend(torch.device(device)) != "reference", subset


def test_real_resolver_on_devices_absent_here(monkeypatch):
    """No GPU here: a CUDA or MPS device still resolves to a fast backend, never the loop."""
    monkeypatch.delenv("SSAMBA_SCAN", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert scan_mod.resolve_backend(torch.device("cuda")) == "torch"
    assert scan_mod.resolve_backend(torch.device("mps")) == "torch"
    monkeypatch.setenv("SSAMBA_SCAN", "reference")
    assert scan_mod.resolve_backend(torch.device("cuda")) == "reference"


@pytest.mark.parametrize(
    ("forced", "device", "reason"),
    [
        ("cpu", "cuda", "needs CPU tensors"),
        ("cpu", "mps", "needs CPU tensors"),
        ("cuda", "cpu", "needs CUDA tensors"),
        ("triton", "mps", "CUDA devices|not installed"),
    ],
)
def test_forced_backend_that_cannot_run_raises(monkeypatch, forced, device, reason):
    monkeypatch.setenv("SSAMBA_SCAN", forced)
    with pytest.raises(ValueError, match=reason):
        scan_mod.resolve_backend(torch.device(device))
    info = scan_mod.scan_backends(device)
    assert info["selected"] is None and re.search(reason, info["error"])
    assert info["forced"] == forced
    monkeypatch.delenv("SSAMBA_SCAN")
    with pytest.raises(ValueError, match=reason):
        scan_mod.resolve_backend(device, forced)


def test_scan_backends_report(monkeypatch):
    from ssamba import ops

    monkeypatch.delenv("SSAMBA_SCAN", raising=False)
    info = ops.scan_backends("cpu")
    assert info["device"] == "cpu" and info["forced"] is None and info["error"] is None
    assert set(info["backends"]) == set(scan_mod.BACKENDS)
    for name, entry in info["backends"].items():
        assert entry["available"] == (entry["reason"] is None), name
    assert info["backends"]["reference"]["available"] and info["backends"]["torch"]["available"]
    assert info["selected"] == "cpu"  # numba is importable in this module (importorskip above)
    assert not info["backends"]["cuda"]["available"]
    mps = ops.scan_backends("mps")
    assert mps["selected"] == "torch" and "needs CPU" in mps["backends"]["cpu"]["reason"]


def test_selective_scan_many_matches_single_calls():
    a = make_inputs(2, 30, 20, 8, seed=6)
    b = make_inputs(2, 30, 20, 8, seed=7)
    scans = [(*a, True, False), (*b, True, True)]
    for backend in ("cpu", "torch", "reference"):
        with torch.no_grad():
            outs = scan_mod.selective_scan_many(scans, backend=backend)
        for out, s in zip(outs, scans, strict=True):
            want = selective_scan_ref(*[t.double() for t in s[:8]], reverse=s[9])
            assert rel_err(out, want) < 1e-5, backend

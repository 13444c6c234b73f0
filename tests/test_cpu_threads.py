"""Where the CPU kernels run (ssamba.ops.cpu_threads, ssamba.ops.kernel_entry): every work item
exactly once through the kernels' C entries, on torch's own OpenMP threads where the runtime is
found, on a pool of our own otherwise; results that do not depend on the thread count or on the
dispatcher (scan and conv, values and gradients); a failing item reported in the caller; calls
the kernel would misread refused; a forked process handled."""

from __future__ import annotations

import ctypes
import multiprocessing
import threading
import warnings

import numpy as np
import pytest
import torch
from numba import njit

pytest.importorskip("ssamba.ops.scan_cpu")
from scan_cases import make_inputs  # noqa: E402
from ssamba.ops import cpu_threads, kernel_entry, scan_cpu  # noqa: E402
from ssamba.ops.conv_cpu import conv1d_silu_cpu, conv1d_silu_pair_cpu  # noqa: E402
from ssamba.ops.kernel_entry import HEADER, NativeKernel, take1, take_int  # noqa: E402

_gettid = ctypes.CDLL(None).gettid  # the OS thread id, callable from numba code
_gettid.argtypes, _gettid.restype = [], ctypes.c_int

TEAM = cpu_threads.find_openmp_team()
needs_team = pytest.mark.skipif(TEAM is None, reason="torch's OpenMP runtime not found here")


@pytest.fixture
def threads():
    """Set torch's thread count for one test, restored after it."""
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


@pytest.fixture(params=["openmp", "pool"])
def dispatcher(request, monkeypatch):
    """Run the test once on torch's OpenMP team and once on the fallback pool."""
    if request.param == "openmp":
        if TEAM is None:
            pytest.skip("torch's OpenMP runtime not found here")
        monkeypatch.setattr(cpu_threads, "_team", TEAM)
    else:
        monkeypatch.setattr(cpu_threads, "_team", None)
    monkeypatch.setattr(cpu_threads, "_team_searched", True)
    return request.param


@njit(nogil=True)
def _count_kernel(count, tids, fail_at, j0, j1):
    """Adds 1 to count[j] and records the OS thread of item j; item ``fail_at`` raises."""
    for j in range(j0, j1):
        if j == fail_at:
            raise ValueError("item failed")
        count[j] += 1.0
        tids[j] = _gettid()


@njit
def _count_items(p, dt):
    count, k = take1(p, HEADER, dt)
    tids, k = take1(p, k, dt)
    fail_at, k = take_int(p, k)
    j = kernel_entry.next_item(p)
    while j >= 0:
        try:
            _count_kernel(count, tids, fail_at, j, j + 1)
        except Exception:  # noqa: BLE001
            kernel_entry.failed(p)
        j = kernel_entry.next_item(p)


def _count_entry64(p):
    _count_items(p, np.float64)


COUNT = NativeKernel(_count_kernel, "11i", {8: _count_entry64}, cache=False)


def _count_call(n_items: int, fail_at: int = -1):
    count = torch.zeros(n_items, dtype=torch.float64)
    tids = torch.zeros(n_items, dtype=torch.float64)
    return (COUNT, (count, tids, fail_at), n_items), count, tids


def test_no_runtime_found_falls_back_to_the_pool(monkeypatch):
    monkeypatch.setattr(cpu_threads, "_loaded_openmp_libraries", lambda: [])
    assert cpu_threads.find_openmp_team() is None
    several = ["/usr/lib/libgomp.so.1", "/opt/other/libomp.so"]  # none of them torch's
    monkeypatch.setattr(cpu_threads, "_loaded_openmp_libraries", lambda: several)
    assert cpu_threads.find_openmp_team() is None


def _scan_and_conv(n_threads: int) -> list[torch.Tensor]:
    """Outputs and every gradient of a scan (two channel groups) and a conv pair, on n threads."""
    torch.set_num_threads(n_threads)
    args = make_inputs(3, 100, 200, 16, seed=8)
    leaves = [a.clone().requires_grad_() for a in args]
    y = scan_cpu.selective_scan_cpu(*leaves, reverse=True)
    y.sum().backward()
    g = torch.Generator().manual_seed(4)
    xz = torch.randn(3, 70, 96, generator=g)
    x = xz[..., :48].clone().requires_grad_()
    w = torch.randn(48, 1, 4, generator=g).requires_grad_()
    b = torch.randn(48, generator=g).requires_grad_()
    c = conv1d_silu_cpu(x, w, b, True)
    (c * torch.randn(c.shape, generator=g)).sum().backward()
    with torch.no_grad():
        pair = conv1d_silu_pair_cpu(xz[..., :48], [(w, b, False), (w, b, True)])
    return [y.detach(), *(p.grad for p in leaves), c.detach(), x.grad, w.grad, b.grad, *pair]


def test_results_do_not_depend_on_threads_or_dispatcher(dispatcher, threads):
    """Work items write disjoint outputs and per-item partials added in a fixed order: 1, 2 and
    3 threads, on either dispatcher, agree bit for bit (scan and conv, values and gradients)."""
    want = _scan_and_conv(1)
    for n in (2, 3):
        for a, b in zip(want, _scan_and_conv(n), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _child(queue) -> None:
    torch.set_num_threads(2)
    call, count, _ = _count_call(5)
    cpu_threads.run_parallel([call])
    queue.put((cpu_threads.dispatch(), count.tolist()))


@needs_team
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork")
def test_forked_process_uses_its_own_threads(threads, monkeypatch):
    """A child forked after the team ran gets the pool, and every item runs (an OpenMP team
    does not survive fork: torch's own parallel operations hang in such a child, so the child
    runs a stand-in kernel only)."""
    monkeypatch.setattr(cpu_threads, "_team", TEAM)
    monkeypatch.setattr(cpu_threads, "_team_searched", True)
    threads(2)
    call, _, _ = _count_call(2)
    cpu_threads.run_parallel([call])  # the parent's team has run
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    try:
        dispatch, items = queue.get(timeout=60)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    assert dispatch == "python threads"
    assert items == [1.0] * 5


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_item_runs_once(dispatcher, threads, n):
    """Items handed out by the call's counter: each runs once, however many threads enter."""
    threads(n)
    calls = [_count_call(m) for m in (40, 1, 0, 7)]
    cpu_threads.run_parallel([c for c, _, _ in calls])
    for (_, _, m), count, _ in calls:
        assert count.tolist() == [1.0] * m


@needs_team
def test_items_run_on_torchs_threads_without_python(threads, monkeypatch):
    """On the team every item runs on the caller or on a thread Python did not create."""
    monkeypatch.setattr(cpu_threads, "_team", TEAM)
    monkeypatch.setattr(cpu_threads, "_team_searched", True)
    threads(2)
    call, count, tids = _count_call(200)
    cpu_threads.run_parallel([call])
    assert count.tolist() == [1.0] * 200
    python_threads = {t.native_id for t in threading.enumerate()}
    ran_on = {int(t) for t in tids.tolist()}
    assert not (ran_on - {threading.get_native_id()}) & python_threads


def test_errors_reach_the_caller(dispatcher, threads):
    threads(2)
    call, count, _ = _count_call(6, fail_at=3)
    with pytest.raises(RuntimeError, match="_count_kernel: a work item raised"):
        cpu_threads.run_parallel([call])
    assert count.tolist() == [1, 1, 1, 0, 1, 1]  # the other items still ran
    call, count, _ = _count_call(5)  # and the dispatcher still works afterwards
    cpu_threads.run_parallel([call])
    assert count.tolist() == [1.0] * 5


def test_call_arguments_are_checked():
    """A tensor the kernel would misread is refused before any thread enters."""
    ok = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(TypeError, match="3 arguments expected, got 2"):
        COUNT.bind((ok, ok), 4)
    with pytest.raises(TypeError, match="argument 1: .* got torch.float64, not contiguous"):
        COUNT.bind((ok, torch.zeros(4, 2, dtype=torch.float64).t(), -1), 4)
    with pytest.raises(TypeError, match="argument 1: .* got torch.float32, contiguous"):
        COUNT.bind((ok, torch.zeros(4), -1), 4)  # two float widths in one call
    with pytest.raises(TypeError, match="argument 0: .* got ndarray"):
        COUNT.bind((np.zeros(4), ok, -1), 4)
    with pytest.raises(TypeError, match="argument 0: 2 dimensions expected, got 1"):
        kernel_entry.pack("2", (ok,), 1)
    buf = kernel_entry.pack("1i", (ok, 7), 4)
    assert list(buf) == [0, 4, 0, 8, ok.data_ptr(), 4, 7]


def test_items_left_unrun_are_reported():
    """check() after the threads returned: a call whose counter did not pass every item raises
    (it never does when the threads take items until none is left)."""
    call, _, _ = _count_call(3)
    kernel, args, n_items = call
    bound = kernel.bind(args, n_items)
    with pytest.raises(RuntimeError, match="3 work items did not run"):
        bound.check()
    bound.call(bound.pointer)
    bound.check()


def test_only_kernels_with_c_entries_are_run():
    with pytest.raises(TypeError, match="a kernel with a C entry is needed"):
        cpu_threads.run_parallel([(lambda j0, j1: None, (), 2)])


def test_c_entries_are_cached_on_disk():
    """numba caches every C entry (only a first run compiles them): an entry numba cannot cache
    (a dynamic global, a kernel handed over as an argument) would compile again in every
    process. (The entries were compiled above, so this loads them from the cache.)"""
    from numba import cfunc
    from numba.core.errors import NumbaWarning

    from ssamba.ops import conv_cpu

    kernels = (scan_cpu.FORWARD, scan_cpu.BACKWARD, conv_cpu.CONV_KERNEL, conv_cpu.DWEIGHT_KERNEL)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NumbaWarning)
        for kernel in kernels:
            cfunc(kernel_entry.ENTRY_SIGNATURE, cache=True)(kernel._entries[4])

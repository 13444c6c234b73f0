"""Where the CPU kernels run: on torch's own intra-op threads.

A kernel call is ``(fn, args, n_jobs)``. The scan and conv kernels have C entries
(:class:`ssamba.ops.kernel_entry.NativeKernel`): :func:`run_parallel` packs the call's tensors
into one buffer and the threads of torch's OpenMP team enter the kernel's C entry point directly,
each taking work items from the call's atomic counter until none is left: no Python and no GIL on
any of them (a dispatch costs ~20 us on two threads; through Python callbacks it cost 70-120,
the threads taking turns at the GIL), and a thread that the host slows down simply takes fewer
items. Which thread runs which item never changes a result: the kernels write disjoint outputs
and per-item partials. Any other ``fn`` (``fn(*args, j0, j1)``, e.g. a test's stand-in) is called
from Python: its items are cut into one piece per thread of ``torch.get_num_threads()``, piece k
of every call on thread k.

Why torch's team: after each of torch's parallel operations its OpenMP workers spin for a while
waiting for more work, on the very cores threads of our own wanted, so with a pool of our own a
second thread made SSAMBA's training step no faster (2.05 s on one thread, 2.2 s on two,
SSAMBA-tiny, 512 tokens, batch 2); on the team's own threads, 1.28 s (docs/performance.md). The
team is entered through ``GOMP_parallel`` of the runtime torch loaded (GNU libgomp; LLVM's and
Intel's runtimes export the same entry point).

A pool of our own threads remains the fallback where no OpenMP runtime can be found (torch built
with another parallel backend, a system without ``/proc``, several runtimes loaded and none of
them torch's) and in a process forked from the one that first used the team (an OpenMP team does
not survive ``fork``); the C entries run there too (ctypes releases the GIL for them).
:func:`dispatch` says which one runs.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

_OPENMP_LIBS = ("libgomp", "libiomp", "libomp")  # file names of the runtimes' shared libraries
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def num_threads() -> int:
    """Threads the kernels use: torch's intra-op count (the kernels never run alongside torch)."""
    return max(1, torch.get_num_threads())


def split(calls, n: int) -> list[list[tuple]]:
    """Piece k (a list of ``(fn, args, j0, j1)``) of each call, for threads k = 0 .. n - 1."""
    pieces: list[list[tuple]] = [[] for _ in range(n)]
    for fn, args, n_jobs in calls:
        parts = min(n, max(1, n_jobs))
        for k in range(parts):
            j0, j1 = n_jobs * k // parts, n_jobs * (k + 1) // parts
            if j1 > j0:
                pieces[k].append((fn, args, j0, j1))
    return pieces


def _work(piece) -> None:
    for fn, args, j0, j1 in piece:
        fn(*args, j0, j1)


class _Dispatch:
    """One call's pieces, what ran of them, and the first error a team thread met."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.ran = [False] * len(pieces)
        self.error: BaseException | None = None


class OpenMPTeam:
    """torch's OpenMP runtime, entered through ``GOMP_parallel(fn, data, n_threads, flags)``."""

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.path = path
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        self._parallel.restype = None
        # the same entry point for C entries (ssamba.ops.kernel_entry): a plain function address
        self._parallel_native = lib["GOMP_parallel"]
        self._parallel_native.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint,
                                          ctypes.c_uint]  # fmt: skip
        self._parallel_native.restype = None
        self._thread_num = lib.omp_get_thread_num
        self._thread_num.restype = ctypes.c_int
        self._callback = _CALLBACK(self._body)  # kept alive as long as the team
        self._dispatches: dict[int, _Dispatch] = {}  # by key: several callers may run at once
        self._keys = itertools.count(1)
        self.pid = os.getpid()

    def _body(self, key) -> None:
        """Runs on every team thread (the caller is thread 0), the GIL taken by ctypes."""
        d = self._dispatches[key]
        k = self._thread_num()
        if k >= len(d.pieces):
            return
        try:
            _work(d.pieces[k])
        except BaseException as e:  # noqa: BLE001 - re-raised by run() in the caller
            if d.error is None:
                d.error = e
        d.ran[k] = True

    def run_native(self, call, threads: int) -> None:
        """Every team thread enters the C function: no Python, no GIL. A team smaller than asked
        for (inside another parallel region) still runs every item: each thread takes items
        until none is left."""
        self._parallel_native(call.address, call.pointer, threads, 0)

    def run(self, pieces) -> None:
        key = next(self._keys)
        d = self._dispatches[key] = _Dispatch(pieces)
        try:
            self._parallel(self._callback, key, len(pieces), 0)  # ctypes releases the GIL
        finally:
            del self._dispatches[key]
        if d.error is not None:
            raise d.error
        # A team smaller than asked for (called inside another parallel region, a thread limit)
        # leaves pieces that no thread ran: they run here.
        for piece, ran in zip(pieces, d.ran, strict=True):
            if not ran:
                _work(piece)


def _loaded_openmp_libraries() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    paths = []
    for line in lines:
        fields = line.split()  # address, perms, offset, dev, inode[, path]
        path = fields[-1] if len(fields) >= 6 else ""
        if os.path.basename(path).startswith(_OPENMP_LIBS) and path not in paths:
            paths.append(path)
    return paths


def find_openmp_team() -> OpenMPTeam | None:
    """torch's OpenMP runtime, or None where it cannot be told apart or lacks the entry points."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    paths = _loaded_openmp_libraries()
    torch_dir = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    # torch's own copy (torch/lib, torch.libs); otherwise the only runtime loaded, if only one
    own = [p for p in paths if p.startswith(os.path.join(torch_dir, "torch"))]
    candidates = own or (paths if len(paths) == 1 else [])
    for path in candidates:
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except (OSError, AttributeError):  # AttributeError: no RTLD_NOLOAD on this platform
            continue
        if hasattr(lib, "GOMP_parallel") and hasattr(lib, "omp_get_thread_num"):
            return OpenMPTeam(lib, path)
    return None


class ThreadPool:
    """The fallback: plain Python threads that sleep on a lock between calls."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def run_native(self, call, threads: int) -> None:
        """``threads - 1`` of our threads and the caller enter the C function (ctypes releases
        the GIL for the call)."""
        self._run([functools.partial(call.call, call.pointer) for _ in range(threads)])

    def run(self, pieces) -> None:
        self._run([functools.partial(_work, p) for p in pieces if p])

    def _run(self, tasks) -> None:
        """The first task in the caller, the others on the pool's threads; waits for all."""
        helpers = tasks[1:]
        if not helpers:
            tasks[0]()
            return
        with self._lock:
            if self._pid != os.getpid():  # forked: the pool's threads stayed in the parent
                self._pool, self._size, self._pid = None, 0, os.getpid()
            if self._pool is None or self._size < len(helpers):
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(len(helpers), thread_name_prefix="ssamba-kernel")
                self._size = len(helpers)
            futures = [self._pool.submit(task) for task in helpers]
        tasks[0]()
        for f in futures:
            f.result()


_team: OpenMPTeam | None = None
_team_searched = False
_pool = ThreadPool()


def _runner() -> OpenMPTeam | ThreadPool:
    global _team, _team_searched
    if not _team_searched:
        _team, _team_searched = find_openmp_team(), True
    if _team is not None and _team.pid == os.getpid():
        return _team
    return _pool


def dispatch() -> str:
    """Where :func:`run_parallel` runs the pieces: ``openmp (LIBRARY FILE)`` (the runtime's file
    name; its path is ``_runner().path``) or ``python threads``."""
    runner = _runner()
    if isinstance(runner, OpenMPTeam):
        return f"openmp ({os.path.basename(runner.path)})"
    return "python threads"


def run_parallel(calls) -> None:
    """Run kernel calls ``(fn, args, n_jobs)``, their work items cut over ``num_threads()``.

    Kernels with C entries (:class:`ssamba.ops.kernel_entry.NativeKernel`, what the scan and
    conv kernels are) run one call after the other, every thread taking items from the call's
    counter, without the GIL. Any other ``fn`` is called from Python, once per piece."""
    if all(hasattr(fn, "bind") for fn, _, _ in calls):
        for fn, args, n_jobs in calls:
            if n_jobs > 0:
                _run_native(fn.bind(args, n_jobs))
        return
    n = num_threads()
    pieces = split(calls, n)
    used = max((k + 1 for k in range(n) if pieces[k]), default=1)
    if used == 1:
        _work(pieces[0])
        return
    _runner().run(pieces[:used])


def _run_native(call) -> None:
    """One bound call (ssamba.ops.kernel_entry.BoundCall) on up to ``num_threads()`` threads."""
    threads = min(num_threads(), call.n_items)
    if threads == 1:
        call.call(call.pointer)
    else:
        _runner().run_native(call, threads)
    call.check()

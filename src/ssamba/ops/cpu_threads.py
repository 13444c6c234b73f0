"""Where the CPU kernels run: on torch's own intra-op threads.

A kernel call is ``(kernel, args, n_items)``, the kernel a
:class:`ssamba.ops.kernel_entry.NativeKernel` (what the scan and conv kernels are).
:func:`run_parallel` packs the call's tensors into one buffer, and the threads of torch's OpenMP
team enter the kernel's C entry point directly, each taking work items from the call's atomic
counter until none is left: no Python and no GIL on any of them (a dispatch costs ~20 us on two
threads; through a Python callback per thread it cost 70-240, the threads taking turns at the
GIL), and a thread that the host slows down simply takes fewer items. Which thread runs which
item never changes a result: the kernels write disjoint outputs and per-item partials.

Why torch's team: after each of torch's parallel operations its OpenMP workers spin for a while
waiting for more work, on the very cores threads of our own wanted, so with a pool of our own a
second thread made SSAMBA's training step no faster (2.05 s on one thread, 2.2 s on two,
SSAMBA-tiny, 512 tokens, batch 2); on the team's own threads, 1.28 s (docs/performance.md). The
team is entered through ``GOMP_parallel`` of the runtime torch loaded (GNU libgomp; LLVM's and
Intel's runtimes export the same entry point).

A pool of our own threads remains the fallback where no OpenMP runtime can be found (torch built
with another parallel backend, a system without ``/proc``, several runtimes loaded and none of
them torch's) and in a process forked from the one that first used the team (an OpenMP team does
not survive ``fork``); its threads enter the same C entries (ctypes releases the GIL for them).
:func:`dispatch` says which one runs.
"""

from __future__ import annotations

import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

_OPENMP_LIBS = ("libgomp", "libiomp", "libomp")  # file names of the runtimes' shared libraries


def num_threads() -> int:
    """Threads the kernels use: torch's intra-op count (the kernels never run alongside torch)."""
    return max(1, torch.get_num_threads())


class OpenMPTeam:
    """torch's OpenMP runtime, entered through ``GOMP_parallel(fn, data, n_threads, flags)``."""

    def __init__(self, lib: ctypes.CDLL, path: str):
        self.path = path
        self._parallel = lib.GOMP_parallel
        self._parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        self._parallel.restype = None
        self.pid = os.getpid()

    def run(self, call, threads: int) -> None:
        """Every team thread enters the call's C entry (ctypes releases the GIL). A team smaller
        than asked for (inside another parallel region) still runs every item: each thread
        takes items until none is left."""
        self._parallel(call.address, call.pointer, threads, 0)


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
        if hasattr(lib, "GOMP_parallel"):
            return OpenMPTeam(lib, path)
    return None


class ThreadPool:
    """The fallback: plain Python threads that sleep on a lock between calls."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def run(self, call, threads: int) -> None:
        """``threads - 1`` of our threads and the caller enter the call's C entry (ctypes
        releases the GIL for it)."""
        helpers = threads - 1
        with self._lock:
            if self._pid != os.getpid():  # forked: the pool's threads stayed in the parent
                self._pool, self._size, self._pid = None, 0, os.getpid()
            if self._pool is None or self._size < helpers:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(helpers, thread_name_prefix="ssamba-kernel")
                self._size = helpers
            futures = [self._pool.submit(call.call, call.pointer) for _ in range(helpers)]
        call.call(call.pointer)
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
    """Where :func:`run_parallel` runs the kernels: ``openmp (LIBRARY FILE)`` (the runtime's file
    name; its path is ``_runner().path``) or ``python threads``."""
    runner = _runner()
    if isinstance(runner, OpenMPTeam):
        return f"openmp ({os.path.basename(runner.path)})"
    return "python threads"


def run_parallel(calls) -> None:
    """Run kernel calls ``(kernel, args, n_items)`` one after the other, each on up to
    ``num_threads()`` threads taking its items from the call's counter."""
    for kernel, args, n_items in calls:
        if not hasattr(kernel, "bind"):
            raise TypeError(f"{kernel!r}: a kernel with a C entry is needed "
                            "(ssamba.ops.kernel_entry.NativeKernel)")  # fmt: skip
        if n_items > 0:
            call = kernel.bind(args, n_items)
            threads = min(num_threads(), n_items)
            if threads == 1:
                call.call(call.pointer)
            else:
                _runner().run(call, threads)
            call.check()

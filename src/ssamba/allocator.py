"""The process's allocator and long sequences: keep freed memory instead of mapping it anew.

glibc serves a block above its mmap threshold (adaptive, at most 32 MiB) with a fresh ``mmap`` and
unmaps it on ``free``. SSAMBA's layers make several (batch, tokens, 2 x width) float32 tensors per
call (a batch of 4 x 8192 tokens x 384 channels is 50 MiB each): with the default thresholds every
call maps fresh pages and pays one page fault per 4 KiB on first touch, about a fifth of a
forward + backward scan at 8192 tokens on one thread (docs/scan.md). :func:`keep_freed_memory`
raises both thresholds so that such blocks come from the heap and freed memory is reused.

A library should not change its host's allocator, so nothing in ``ssamba`` calls this on import:
the ``ssamba`` command does when it starts (set ``SSAMBA_MALLOC=default`` to leave glibc's
defaults), ``ssamba bench``'s worker does for every model alike, and a Python program may call it
itself. Not glibc (macOS, musl): nothing happens. The cost: memory freed by one step stays
mapped for the next (peak RSS does not change; RSS does not shrink between steps).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ENV_VAR", "keep_freed_memory"]

ENV_VAR = "SSAMBA_MALLOC"  # "default": leave the allocator alone
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
_TRIM_THRESHOLD = (1 << 31) - 1  # keep up to 2 GiB of free heap top instead of returning it


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring). Returns whether the
    thresholds were set (False: not glibc, or ``SSAMBA_MALLOC=default``)."""
    if os.environ.get(ENV_VAR, "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    )

"""The allocator setting of the ssamba command (ssamba/allocator.py)."""

import ctypes
import subprocess
import sys

import pytest

from ssamba.allocator import ENV_VAR, keep_freed_memory

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# A child process allocates and frees a 64 MiB block twice: with glibc's default thresholds
# the second block is a fresh mapping (its pages fault again); with freed memory kept, the
# second block reuses the first's pages (almost no new minor faults).
CHILD = """
import ctypes, resource, sys
from ssamba.allocator import keep_freed_memory
set_ = keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
n = 64 << 20
def touch():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(int(set_), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _child(env_value: str | None) -> tuple[bool, int]:
    import os

    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    if env_value is not None:
        env[ENV_VAR] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True).stdout.split()  # fmt: skip
    return out[0] == "1", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_freed_memory_is_reused_and_the_variable_opts_out():
    kept, faults_kept = _child(None)
    default, faults_default = _child("default")
    assert kept and not default
    pages = (64 << 20) // 4096
    assert faults_default > pages // 2  # a fresh mapping: every page faults again
    assert faults_kept < pages // 10  # the heap block is reused


def test_opt_out_in_process(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "default")
    assert keep_freed_memory() is False

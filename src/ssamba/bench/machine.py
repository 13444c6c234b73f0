"""What the numbers depend on: CPU, cores, memory, load, GPU, library versions, git commit."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from ssamba.ops.scan import available_backends

MIB = 1024.0 * 1024.0


def _read_proc(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read_proc("/proc/cpuinfo").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def meminfo_gib(key: str) -> float | None:
    """A ``/proc/meminfo`` entry (``MemTotal``, ``MemAvailable``) in GiB; None off Linux."""
    for line in _read_proc("/proc/meminfo").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024 / 1024
    return None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def default_memory_cap() -> float | None:
    """75 % of physical memory (GiB): keeps a quadratic point from swapping a shared machine."""
    total = meminfo_gib("MemTotal")
    return round(0.75 * total, 1) if total else None


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, else KiB


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info(device: str = "cpu") -> dict:
    """CPU, cores, memory, library versions, load; the GPU too when ``device`` is cuda."""
    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": available_cores(),
        "mem_total_gib": meminfo_gib("MemTotal"),
        "mem_available_gib": meminfo_gib("MemAvailable"),
        "load_1m": loadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "numba": _package_version("numba"),
        "triton": _package_version("triton"),
        "ssamba": _package_version("ssamba"),
        "scan_env": os.environ.get("SSAMBA_SCAN", ""),
        "scan_backends_available": available_backends(),
        "git_commit": git_commit(),
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 1024**3, 1)
        info["cuda"] = torch.version.cuda
    return info


def git_commit() -> str | None:
    """The checkout's commit (``-dirty`` when tracked files changed); None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")

"""One point of the sweep, measured in a fresh process so that its peak memory is its own.

The parent (:mod:`ssamba.bench.sweep`) writes a spec JSON and runs::

    python -m ssamba.bench.worker SPEC.json

which measures the point (:func:`measure_point`) and writes the result JSON named in the spec.
A worker that dies leaves no result; :func:`run_worker` then tells an out-of-memory death (SIGKILL
from the kernel's OOM killer, an allocation failure under the address-space cap) from an error.
"""

from __future__ import annotations

import json
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from ssamba.allocator import keep_freed_memory
from ssamba.bench.machine import MIB, peak_rss_mib
from ssamba.bench.spec import NUM_CLASSES, frames_for_tokens, parse_model
from ssamba.constants import NUM_MEL_BINS, PATCH
from ssamba.models import create_model
from ssamba.ops.scan import resolve_backend

_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc")
# Failures that, under the --max-memory-gb address-space cap, are allocation failures in disguise:
# oneDNN reports a failed scratchpad allocation as a primitive it could not create, and threads or
# JIT code that cannot be mapped fail in their own words.
_CAPPED_OOM_TEXT = ("could not create a primitive", "resource temporarily unavailable", "mmap")
_CUDA_OOM = getattr(torch.cuda, "OutOfMemoryError", MemoryError)  # torch >= 1.13


def is_oom(exc: BaseException, capped: bool = False) -> bool:
    """Whether ``exc`` means out of memory (``capped``: an address-space cap is in force)."""
    if isinstance(exc, (MemoryError, _CUDA_OOM)):
        return True
    text = str(exc).lower()
    return any(s in text for s in _OOM_TEXT + (_CAPPED_OOM_TEXT if capped else ()))


def set_memory_cap(gib: float) -> None:
    """Cap this process's address space (RLIMIT_AS) at ``gib`` GiB (or the hard limit)."""
    limit = int(gib * 1024**3)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


# ------------------------------------------------------------------------------ in the worker
def _build_model(spec: dict, device: torch.device):
    """The fine-tuning model of the point, built for exactly its input length (no resize)."""
    model_spec = parse_model(spec["model"], spec.get("size", "tiny"))
    overrides = dict(model_spec["overrides"])
    if spec.get("depth"):
        overrides["depth"] = int(spec["depth"])
    model = create_model(
        model_spec["preset"],
        num_classes=NUM_CLASSES,
        input_tdim=frames_for_tokens(int(spec["tokens"])),
        fstride=PATCH,
        tstride=PATCH,
        pretrain_heads=False,
        **overrides,
    ).to(device)
    model.train(spec.get("mode", "inference") == "train")
    return model, model_spec


def make_step(model, train: bool, cuda: bool = False):
    """One forward (inference mode) or forward + backward (train mode), finished on return."""

    def step(x):
        if train:
            model(x).float().mean().backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.inference_mode():
                model(x)
        if cuda:  # kernels run asynchronously: the step is done when the device is
            torch.cuda.synchronize()

    return step


def _baseline(result: dict, device: torch.device) -> None:
    """Memory after model creation and priming; the point's peak is measured from here."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        result["baseline_mib"] = torch.cuda.memory_allocated(device) / MIB
    else:
        result["baseline_mib"] = peak_rss_mib()


def _timed_runs(step, x, warmup: int, repeats: int) -> list[float]:
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        step(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _peak(result: dict, device: torch.device) -> None:
    result["peak_rss_mib"] = peak_rss_mib()
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / MIB
    else:
        result["peak_mib"] = result["peak_rss_mib"]
    result["increment_mib"] = max(0.0, result["peak_mib"] - result["baseline_mib"])


def measure_point(spec: dict) -> dict:
    """Run one point in this process and return its measurements (status "ok" or "oom"/"error").

    ``spec``: model (name), size, tokens, batch, repeats, warmup, mode, device, threads, depth,
    max_memory_gb, seed. Meant to run in a fresh process (``python -m ssamba.bench.worker``).
    On CUDA the peak is ``torch.cuda.max_memory_allocated`` (reset after priming) and every
    timed step ends with a device synchronisation.
    """
    t_start = time.perf_counter()
    keep_freed_memory()  # as the ssamba command does, for every model alike
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec.get("device", "cpu"))
    cuda = device.type == "cuda"
    batch, frames = int(spec["batch"]), frames_for_tokens(int(spec["tokens"]))
    model, model_spec = _build_model(spec, device)
    result: dict = {
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "memory_kind": "cuda_allocated" if cuda else "rss",
        "params": model.num_parameters(),
        "depth": model.config.depth,
        # Which scan ran: the dispatch's own answer for this device (SSAMBA_SCAN included).
        "scan_backend": resolve_backend(device) if model_spec["arch"] == "ssamba" else "",
    }
    step = make_step(model, spec.get("mode", "inference") == "train", cuda)
    gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    # Priming pass on the smallest input: JIT kernels, thread pools and allocator warm-up belong
    # to the baseline, not to the point.
    step(torch.randn(1, PATCH, NUM_MEL_BINS, generator=gen).to(device))
    # The numba kernels run on torch's threads (torch's count). numba.get_num_threads() must
    # not be asked: it starts numba's threading layer, whose idle workers spin and took most of
    # the core from a single-threaded training step (3x slower).
    result["numba_threads"] = None
    result["kernel_dispatch"] = ""
    if result["scan_backend"] == "cpu":  # only that backend loads numba: not at import
        from ssamba.ops.cpu_threads import dispatch, num_threads

        result["numba_threads"] = num_threads()
        result["kernel_dispatch"] = dispatch()
    _baseline(result, device)
    capped = bool(spec.get("max_memory_gb")) and not cuda
    if capped:
        set_memory_cap(float(spec["max_memory_gb"]))
    result["startup_s"] = time.perf_counter() - t_start
    times: list[float] = []
    try:
        x = torch.randn(batch, frames, NUM_MEL_BINS, generator=gen).to(device)
        times = _timed_runs(step, x, int(spec.get("warmup", 1)), int(spec.get("repeats", 3)))
        status, error = "ok", ""
    except Exception as e:  # noqa: BLE001 - the point's outcome, reported
        status, error = ("oom" if is_oom(e, capped=capped) else "error"), _error_text(e)
    _peak(result, device)
    result.update(status=status, error=error)
    if times:
        result["time_s"] = statistics.median(times)
        result["time_min_s"] = min(times)
        result["time_per_sample_s"] = result["time_s"] / batch
        result["times"] = times
    return result


def worker_main(spec_path: str) -> int:
    """Measure the point of ``spec_path`` and write its result where the spec says."""
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = measure_point(spec)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory while building the model
        result = {"status": "oom" if is_oom(e) else "error", "error": _error_text(e)}
    Path(spec["result_path"]).write_text(json.dumps(result))  # read once this process exits
    return 0


# ------------------------------------------------------------------------------ in the parent
def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait(proc: subprocess.Popen, timeout: float | None) -> bool:
    """Wait for ``proc``; True if it had to be killed at ``timeout``."""
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()  # our own worker, by its pid
        proc.wait()
        return True
    except BaseException:  # KeyboardInterrupt: do not leave the worker running
        proc.kill()
        proc.wait()
        raise


def _died(spec: dict, rc: int, stderr: str) -> dict:
    """Why a worker left no result: out of memory or an error, from its exit and last words."""
    last = " ".join(stderr.strip().splitlines()[-1:]) if stderr.strip() else ""
    capped = bool(spec.get("max_memory_gb"))
    if rc == -signal.SIGKILL:  # what the kernel's OOM killer sends
        status, why = "oom", "worker killed by SIGKILL (out of memory?)"
    elif is_oom(RuntimeError(stderr), capped=capped) or (capped and rc < 0):
        status, why = "oom", f"worker died (exit {rc}) under memory pressure"
    else:
        status, why = "error", f"worker exited with status {rc}"
    return {"status": status, "error": f"{why}: {last}"[:500] if last else why}


def run_worker(spec: dict, timeout: float | None, env: dict, tmp: Path) -> dict:
    """Run one point in a fresh ``python -m ssamba.bench.worker`` process; its result dict."""
    spec_path, result_path = tmp / "spec.json", tmp / "result.json"
    stdout_path, stderr_path = tmp / "stdout.txt", tmp / "stderr.txt"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}))
    cmd = [sys.executable, "-m", "ssamba.bench.worker", str(spec_path)]
    t0 = time.perf_counter()
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, env=env)
        timed_out = _wait(proc, timeout)
    wall = time.perf_counter() - t0
    if timed_out:
        return {"status": "timeout", "error": f"no result after {timeout:.3g} s", "wall_s": wall}
    if result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except json.JSONDecodeError:
            result = {"status": "error", "error": "unreadable worker result"}
    else:
        result = _died(spec, proc.returncode, _tail(stderr_path))
    result["wall_s"] = wall
    return result


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m ssamba.bench.worker SPEC.json", file=sys.stderr)
        sys.exit(2)
    sys.exit(worker_main(sys.argv[1]))

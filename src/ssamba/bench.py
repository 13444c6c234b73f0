"""``ssamba bench``: time and peak memory of SSAMBA vs SSAST as the input gets longer.

See docs/performance.md.

The paper's efficiency claim (SSAMBA-tiny ~92.7 % faster and ~95.4 % less memory than SSAST-tiny
at ~22k tokens) comes from a sweep of input length at a fixed batch size: fine-tuning models
(527-class head, stride 16), eval mode, no gradients. This module reproduces that sweep:

* every (model, batch, tokens) point runs in a fresh worker process (``python -m ssamba.bench
  --worker SPEC``), so the peak memory of a point is its own: on the CPU the worker's peak RSS
  (``ru_maxrss``), also split into the baseline after model creation and a small priming pass
  (weights, JIT-compiled kernels, thread pools) and the increment the point adds on top; on CUDA
  ``torch.cuda.max_memory_allocated``;
* the sweep is interleaved (for each length, every model in turn), so a CPU whose speed drifts
  over minutes hurts all models alike, and a ``--max-minutes`` budget covers the same lengths for
  every model;
* a model's sweep stops at its first failure: ``oom`` (MemoryError, an allocator "out of memory"
  error, the ``--max-memory-gb`` address-space cap, the worker killed by SIGKILL), ``timeout``
  (``--timeout-per-point``), ``error`` (anything else), ``budget`` (cut by ``--max-minutes``);
  the other models go on.

Tokens are stride-16 patch tokens: 8 frequency patches per time column, so ``tokens`` must be a
multiple of 8 and the input has ``frames = tokens // 8 * 16`` frames (``(frames - 16) // 16 + 1 ==
tokens // 8``). The model is built for that many frames, so no positional-embedding resize is
timed.

Python API: :func:`run_bench` (the sweep; writes ``bench.csv``, ``bench.json``, ``bench.png``),
:func:`summarize` (SSAMBA vs each SSAST: speed-up and memory reduction per length, break-even
token counts, log-log exponents), :func:`markdown_report`, :func:`plot`, :func:`load_points`.

This module imports only the standard library at the top (``ssamba --help`` stays fast); torch
and matplotlib are imported where they are used.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

FREQ_PATCHES = 8  # (128 mel bins - 16) // 16 + 1
PATCH = 16
NUM_CLASSES = 527  # the AudioSet fine-tuning head the reference measured with
DEFAULT_TOKENS = (128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_FIT_MIN_TOKENS = 1024
STATUSES = ("ok", "oom", "timeout", "error", "budget")
_MIB = 1024.0 * 1024.0

CSV_FIELDS = (
    "model",
    "arch",
    "attention",
    "batch",
    "tokens",
    "frames",
    "mode",
    "device",
    "status",
    "time_s",
    "time_min_s",
    "time_per_sample_s",
    "peak_mib",
    "baseline_mib",
    "increment_mib",
    "peak_rss_mib",
    "memory_kind",
    "repeats",
    "warmup",
    "scan_backend",
    "threads",
    "numba_threads",
    "params",
    "depth",
    "startup_s",
    "wall_s",
    "load_1m",
    "max_memory_gb",
    "torch_version",
    "error",
)


# --------------------------------------------------------------------------------------------------
# Model names and token counts


def frames_for_tokens(tokens: int) -> int:
    """Input frames giving ``tokens`` stride-16 patch tokens (8 frequency patches per column)."""
    if tokens < FREQ_PATCHES or tokens % FREQ_PATCHES:
        raise ValueError(f"tokens must be a positive multiple of {FREQ_PATCHES}, got {tokens}")
    frames = tokens // FREQ_PATCHES * PATCH
    assert (frames - PATCH) // PATCH + 1 == tokens // FREQ_PATCHES
    return frames


def parse_model(name: str, size: str = "tiny") -> dict:
    """``ssamba_tiny`` / ``ssast_small_explicit`` / ``ssast`` (+ ``size``) -> a model spec.

    Returns ``{"name", "preset", "arch", "attention", "overrides"}``; ``name`` is canonical
    (``<arch>_<size>[_explicit]``). SSAST takes an ``_explicit`` (the reference's materialised
    N x N attention) or ``_sdpa`` (ours, the default) suffix.
    """
    from ssamba.models.config import SIZES  # light: no torch

    parts = name.strip().lower().split("_")
    arch = parts[0]
    if arch not in ("ssamba", "ssast"):
        raise ValueError(
            f"unknown model {name!r}: expected ssamba_<size> or ssast_<size>[_explicit]"
        )
    rest = parts[1:]
    model_size = size
    if rest and rest[0] in SIZES:
        model_size = rest.pop(0)
    if model_size not in SIZES:
        raise ValueError(f"unknown size {model_size!r}; choose one of {', '.join(SIZES)}")
    attention = None
    if rest and rest[0] in ("explicit", "sdpa"):
        attention = rest.pop(0)
    if rest:
        raise ValueError(f"cannot parse model name {name!r}")
    if attention is not None and arch != "ssast":
        raise ValueError(f"{name!r}: only SSAST models take an attention suffix")
    overrides: dict = {}
    canonical = f"{arch}_{model_size}"
    if arch == "ssast":
        attention = attention or "sdpa"
        overrides["attention"] = attention
        if attention == "explicit":
            canonical += "_explicit"
    return {
        "name": canonical,
        "preset": f"{arch}_{model_size}",
        "arch": arch,
        "attention": attention or "",
        "overrides": overrides,
    }


def default_models(size: str = "tiny") -> list[str]:
    return [f"ssamba_{size}", f"ssast_{size}", f"ssast_{size}_explicit"]


def _int_list(text: str | int | Iterable[int], what: str) -> list[int]:
    if isinstance(text, int):
        return [text]
    if isinstance(text, str):
        items = [t for t in text.replace(" ", "").split(",") if t]
        try:
            values = [int(t) for t in items]
        except ValueError:
            raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None
    else:
        values = [int(t) for t in text]
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what}: expected positive integers, got {text!r}")
    return values


# --------------------------------------------------------------------------------------------------
# Machine information


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


def _meminfo_gib(key: str) -> float | None:
    for line in _read_proc("/proc/meminfo").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024 / 1024
    return None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine_info(device: str = "cpu") -> dict:
    """What the numbers depend on: CPU, cores, memory, library versions, load."""
    import torch

    info = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": available_cores(),
        "mem_total_gib": _meminfo_gib("MemTotal"),
        "mem_available_gib": _meminfo_gib("MemAvailable"),
        "load_1m": _loadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "scan_env": os.environ.get("SSAMBA_SCAN", ""),
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    try:
        from importlib.metadata import version

        info["ssamba"] = version("ssamba")
    except Exception:  # noqa: BLE001 - not installed
        info["ssamba"] = None
    info["git_commit"] = _git_commit()
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------------------------------
# The worker: one point, in its own process


def _peak_rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, else KiB


_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc")
# Failures that, under the --max-memory-gb address-space cap, are allocation failures in disguise:
# oneDNN reports a failed scratchpad allocation as a primitive it could not create, and threads or
# JIT code that cannot be mapped fail in their own words.
_CAPPED_OOM_TEXT = ("could not create a primitive", "resource temporarily unavailable", "mmap")


def _is_oom(exc: BaseException, capped: bool = False) -> bool:
    """Whether ``exc`` means out of memory (``capped``: an address-space cap is in force)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return any(s in text for s in _OOM_TEXT + (_CAPPED_OOM_TEXT if capped else ()))


def _set_memory_cap(gib: float) -> None:
    import resource

    limit = int(gib * 1024**3)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def measure_point(spec: dict) -> dict:
    """Run one point in this process and return its measurements (status "ok" or "oom"/"error").

    ``spec``: model (name), size, tokens, batch, repeats, warmup, mode, device, threads, depth,
    max_memory_gb, seed. Meant to run in a fresh process (:func:`_worker_main`).
    """
    t_start = time.perf_counter()
    import torch

    from ssamba.models import create_model

    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    device = torch.device(spec.get("device", "cpu"))
    cuda = device.type == "cuda"
    model_spec = parse_model(spec["model"], spec.get("size", "tiny"))
    tokens, batch, mode = int(spec["tokens"]), int(spec["batch"]), spec.get("mode", "inference")
    frames = frames_for_tokens(tokens)
    overrides = dict(model_spec["overrides"])
    if spec.get("depth"):
        overrides["depth"] = int(spec["depth"])
    result: dict = {
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "memory_kind": "cuda_allocated" if cuda else "rss",
    }
    model = create_model(
        model_spec["preset"],
        num_classes=NUM_CLASSES,
        input_tdim=frames,
        fstride=PATCH,
        tstride=PATCH,
        pretrain_heads=False,
        **overrides,
    ).to(device)
    result["params"] = model.num_parameters()
    result["depth"] = model.config.depth
    if model_spec["arch"] == "ssamba":
        from ssamba.ops.scan import resolve_backend

        result["scan_backend"] = resolve_backend(device)
    else:
        result["scan_backend"] = ""
    train = mode == "train"
    model.train(train)
    gen = torch.Generator().manual_seed(int(spec.get("seed", 0)))

    def step(x):
        if train:
            out = model(x)
            out.float().mean().backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.inference_mode():
                model(x)
        if cuda:
            torch.cuda.synchronize()

    # Priming pass on the smallest input: JIT kernels, thread pools and allocator warm-up belong
    # to the baseline, not to the point.
    step(torch.randn(1, PATCH, 128, generator=gen).to(device))
    result["numba_threads"] = None
    if result["scan_backend"] == "cpu":  # the numba kernel follows torch's thread count
        import numba

        result["numba_threads"] = numba.get_num_threads()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        result["baseline_mib"] = torch.cuda.memory_allocated(device) / _MIB
    else:
        result["baseline_mib"] = _peak_rss_mib()
    cap = spec.get("max_memory_gb")
    if cap and not cuda:
        _set_memory_cap(float(cap))
    result["startup_s"] = time.perf_counter() - t_start

    times = []
    try:
        x = torch.randn(batch, frames, 128, generator=gen).to(device)
        for i in range(int(spec.get("warmup", 1)) + int(spec.get("repeats", 3))):
            t0 = time.perf_counter()
            step(x)
            if i >= int(spec.get("warmup", 1)):
                times.append(time.perf_counter() - t0)
        status, error = "ok", ""
    except Exception as e:  # noqa: BLE001 - the point's outcome, reported
        status = "oom" if _is_oom(e, capped=bool(cap and not cuda)) else "error"
        error = f"{type(e).__name__}: {' '.join(str(e).split())}"[:500]
    result["peak_rss_mib"] = _peak_rss_mib()
    if cuda:
        result["peak_mib"] = torch.cuda.max_memory_allocated(device) / _MIB
    else:
        result["peak_mib"] = result["peak_rss_mib"]
    result["increment_mib"] = max(0.0, result["peak_mib"] - result["baseline_mib"])
    result.update(status=status, error=error)
    if times:
        result["time_s"] = statistics.median(times)
        result["time_min_s"] = min(times)
        result["time_per_sample_s"] = result["time_s"] / batch
        result["times"] = times
    return result


def _worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["result_path"])
    try:
        result = measure_point(spec)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory while building the model
        result = {
            "status": "oom" if _is_oom(e) else "error",
            "error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:500],
        }
    out.write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------------
# The parent: the sweep


def _tail(path: Path, n: int = 2000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-n:]


def _run_worker(spec: dict, timeout: float | None, env: dict, tmp: Path) -> dict:
    """Run one point in a fresh ``python -m ssamba.bench --worker`` process."""
    spec_path, result_path = tmp / "spec.json", tmp / "result.json"
    stdout_path, stderr_path = tmp / "stdout.txt", tmp / "stderr.txt"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}))
    cmd = [sys.executable, "-m", "ssamba.bench", "--worker", str(spec_path)]
    t0 = time.perf_counter()
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, env=env)
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()  # our own worker, by its pid
            proc.wait()
            timed_out = True
        except BaseException:  # KeyboardInterrupt: do not leave the worker running
            proc.kill()
            proc.wait()
            raise
    wall = time.perf_counter() - t0
    if timed_out:
        return {"status": "timeout", "error": f"no result after {timeout:.3g} s", "wall_s": wall}
    if result_path.exists():
        try:
            result = json.loads(result_path.read_text())
        except json.JSONDecodeError:
            result = {"status": "error", "error": "unreadable worker result"}
        result["wall_s"] = wall
        return result
    # No result: the worker died. SIGKILL is what the kernel's OOM killer sends.
    rc = proc.returncode
    err = _tail(stderr_path)
    last = " ".join(err.strip().splitlines()[-1:]) if err.strip() else ""
    if rc == -signal.SIGKILL:
        status, why = "oom", "worker killed by SIGKILL (out of memory?)"
    elif _is_oom(RuntimeError(err), capped=bool(spec.get("max_memory_gb"))) or (
        spec.get("max_memory_gb") and rc < 0
    ):
        status, why = "oom", f"worker died (exit {rc}) under memory pressure"
    else:
        status, why = "error", f"worker exited with status {rc}"
    return {"status": status, "error": f"{why}: {last}"[:500] if last else why, "wall_s": wall}


def _log(msg: str) -> None:
    print(msg, flush=True)


def _default_memory_cap() -> float | None:
    total = _meminfo_gib("MemTotal")
    return round(0.75 * total, 1) if total else None


def run_bench(
    models: Sequence[str] | str | None = None,
    tokens: Sequence[int] | str = DEFAULT_TOKENS,
    batch: Sequence[int] | int | str = 4,
    *,
    size: str = "tiny",
    repeats: int = 3,
    warmup: int = 1,
    mode: str = "inference",
    timeout_per_point: float | None = 600.0,
    max_minutes: float | None = None,
    threads: int | None = None,
    device: str = "cpu",
    max_memory_gb: float | str | None = "auto",
    depth: int | None = None,
    scan: str | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    command: str | None = None,
    fit_min_tokens: int | None = DEFAULT_FIT_MIN_TOKENS,
    make_plot: bool = True,
    log: Callable[[str], None] | None = _log,
) -> list[dict]:
    """Sweep input length (and batch size) for each model; one fresh process per point.

    ``models``: names as :func:`parse_model` reads them (default: SSAMBA, SSAST and SSAST with
    explicit attention of ``size``). ``tokens``: patch-token counts (multiples of 8). ``batch``:
    one or several batch sizes. ``mode``: ``"inference"`` (eval, ``torch.inference_mode``) or
    ``"train"`` (train mode, forward + backward, no optimizer). ``timeout_per_point`` bounds each
    worker (start-up, priming, warm-up and repeats); ``max_minutes`` the whole run.
    ``threads``: torch threads in the workers (default: all available cores; the numba scan
    follows torch). ``max_memory_gb``: address-space cap (RLIMIT_AS) set in each worker after
    model creation; ``"auto"`` is 75 % of physical memory on the CPU and no cap on CUDA, ``None``
    or 0 no cap. ``depth``: override the models' depth (tests). ``scan``: force a scan backend
    (SSAMBA_SCAN) in the workers.

    Writes ``bench.csv`` and ``bench.json`` after every point and ``bench.png`` at the end when
    ``out`` is given. Returns the points (dicts with the :data:`CSV_FIELDS` and ``times``).
    """
    log = log or (lambda _msg: None)
    if mode not in ("inference", "train"):
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    if isinstance(models, str):
        models = [m for m in models.replace(" ", "").split(",") if m]
    specs = [parse_model(m, size) for m in (models or default_models(size))]
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a model is listed twice: {', '.join(names)}")
    token_list = sorted(set(_int_list(tokens, "tokens")))
    for t in token_list:
        frames_for_tokens(t)
    batches = _int_list(batch, "batch")
    if depth is not None:
        for s in specs:
            if s["arch"] == "ssamba" and depth % 2:
                raise ValueError(f"depth {depth} is odd: bidirectional SSAMBA uses layers in pairs")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
    if max_memory_gb == "auto":
        max_memory_gb = None if device == "cuda" else _default_memory_cap()
    max_memory_gb = float(max_memory_gb) if max_memory_gb else None
    threads = int(threads) if threads else available_cores()

    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if scan:
        env["SSAMBA_SCAN"] = scan
    src = str(Path(__file__).resolve().parents[1])  # works without installing the package too
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)

    settings = dict(
        models=names,
        tokens=token_list,
        batch=batches,
        size=size,
        repeats=repeats,
        warmup=warmup,
        mode=mode,
        timeout_per_point=timeout_per_point,
        max_minutes=max_minutes,
        threads=threads,
        device=device,
        max_memory_gb=max_memory_gb,
        depth=depth,
        scan=scan or os.environ.get("SSAMBA_SCAN") or "auto",
        seed=seed,
        fit_min_tokens=fit_min_tokens,
    )
    meta = {
        "command": command if command is not None else shlex.join(sys.argv),
        "equivalent_command": _equivalent_command(
            names,
            token_list,
            batches,
            size,
            repeats,
            warmup,
            mode,
            timeout_per_point,
            max_minutes,
            threads,
            device,
            max_memory_gb,
            depth,
            scan,
            fit_min_tokens,
        ),
        "argv": list(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(device),
        "settings": settings,
    }
    deadline = time.monotonic() + max_minutes * 60 if max_minutes else None
    points: list[dict] = []
    stopped: dict[tuple[str, int], str] = {}  # (model, batch) -> why its sweep ended
    todo = [(b, t, s) for b in batches for t in token_list for s in specs]
    log(
        f"ssamba bench: {len(specs)} model(s) x {len(token_list)} length(s) x {len(batches)} "
        f"batch size(s), {mode}, {device}, {threads} thread(s), memory cap "
        f"{f'{max_memory_gb:g} GiB' if max_memory_gb else 'none'}"
    )
    try:
        with tempfile.TemporaryDirectory(prefix="ssamba-bench-") as tmpdir:
            for k, (b, t, s) in enumerate(todo, 1):
                key = (s["name"], b)
                if key in stopped:
                    continue
                point = {
                    "model": s["name"],
                    "arch": s["arch"],
                    "attention": s["attention"],
                    "batch": b,
                    "tokens": t,
                    "frames": frames_for_tokens(t),
                    "mode": mode,
                    "device": device,
                    "repeats": repeats,
                    "warmup": warmup,
                    "max_memory_gb": max_memory_gb,
                    "load_1m": _loadavg(),
                }
                timeout = timeout_per_point
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 1:
                        point.update(status="budget", error="--max-minutes reached")
                        stopped[key] = "budget"
                        points.append(point)
                        continue
                    if timeout is None or left < timeout:
                        timeout = left
                spec = dict(
                    model=s["name"],
                    size=size,
                    tokens=t,
                    batch=b,
                    repeats=repeats,
                    warmup=warmup,
                    mode=mode,
                    device=device,
                    threads=threads,
                    depth=depth,
                    max_memory_gb=max_memory_gb,
                    seed=seed,
                )
                result = _run_worker(spec, timeout, env, Path(tmpdir))
                if (
                    result["status"] == "timeout"
                    and deadline is not None
                    and (timeout_per_point is None or timeout < timeout_per_point)
                ):
                    result.update(status="budget", error="--max-minutes reached during the point")
                point.update(result)
                points.append(point)
                log(f"[{k}/{len(todo)}] {_describe(point)}")
                if point["status"] != "ok":
                    stopped[key] = point["status"]
                    log(f"    {s['name']} (batch {b}) stops here: {point.get('error', '')}")
                if out_dir is not None:
                    write_results(points, out_dir, meta, fit_min_tokens)
    finally:
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["load_1m_end"] = _loadavg()
        if out_dir is not None and points:
            write_results(points, out_dir, meta, fit_min_tokens)
            if make_plot:
                try:
                    plot(points, out_dir / "bench.png")
                except ImportError:
                    log("matplotlib is not installed: no bench.png (pip install 'ssamba[plot]')")
    return points


def _equivalent_command(
    models,
    tokens,
    batches,
    size,
    repeats,
    warmup,
    mode,
    timeout,
    max_minutes,
    threads,
    device,
    max_memory_gb,
    depth,
    scan,
    fit_min_tokens,
) -> str:
    """An ``ssamba bench`` command line that repeats this run (every setting explicit)."""
    argv = ["ssamba", "bench", "--models", ",".join(models), "--size", size]
    argv += ["--tokens", ",".join(map(str, tokens)), "--batch", ",".join(map(str, batches))]
    argv += ["--repeats", str(repeats), "--warmup", str(warmup), "--mode", mode]
    argv += ["--timeout-per-point", f"{timeout or 0:g}", "--threads", str(threads)]
    argv += ["--device", device, "--max-memory-gb", f"{max_memory_gb or 0:g}"]
    if max_minutes:
        argv += ["--max-minutes", f"{max_minutes:g}"]
    if depth:
        argv += ["--depth", str(depth)]
    if scan:
        argv += ["--scan", scan]
    if fit_min_tokens != DEFAULT_FIT_MIN_TOKENS:
        argv += ["--fit-min-tokens", str(fit_min_tokens or 0)]
    return shlex.join(argv + ["--out", "DIR"])


def _describe(p: dict) -> str:
    head = f"{p['model']:<22} B={p['batch']:<3} tokens={p['tokens']:<6} (T={p['frames']}): "
    if p["status"] != "ok":
        return head + p["status"].upper()
    return head + (
        f"{p['time_s']:.4g} s, peak {p['peak_mib']:.0f} MiB "
        f"(+{p['increment_mib']:.0f} over {p['baseline_mib']:.0f})"
    )


# --------------------------------------------------------------------------------------------------
# Results: files


def write_results(
    points: list[dict],
    out_dir: str | os.PathLike,
    meta: dict | None = None,
    fit_min_tokens: int | None = DEFAULT_FIT_MIN_TOKENS,
) -> None:
    """Write ``bench.csv`` and ``bench.json`` (points, summary, machine, command) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "bench.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for p in points:
            w.writerow({k: _csv_value(p.get(k)) for k in CSV_FIELDS})
    tmp.replace(out_dir / "bench.csv")
    doc = dict(meta or {})
    doc["points"] = points
    doc["summary"] = summarize(points, fit_min_tokens=fit_min_tokens)
    tmp = out_dir / "bench.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(out_dir / "bench.json")


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def load_points(path: str | os.PathLike) -> list[dict]:
    """Points from a ``bench.json`` (or the folder holding it) or a ``bench.csv``."""
    path = Path(path)
    if path.is_dir():
        path = path / "bench.json"
    if path.suffix == ".json":
        return json.loads(path.read_text())["points"]
    numeric = {"batch", "tokens", "frames", "repeats", "warmup", "threads", "numba_threads"}
    numeric |= {"params", "depth"}
    points = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            p: dict = {}
            for k, v in row.items():
                if v == "":
                    p[k] = None
                elif k in numeric:
                    p[k] = int(float(v))
                else:
                    try:
                        p[k] = float(v)
                    except ValueError:
                        p[k] = v
            points.append(p)
    return points


# --------------------------------------------------------------------------------------------------
# Summary: ratios, break-even, exponents


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log(y) against log(x) (points with x, y > 0); None if < 2 points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx


def break_even(tokens: Sequence[int], ratio: Sequence[float | None]) -> dict:
    """Token count above which ``ratio`` (reference / baseline cost) stays below 1.

    ``ratio[i]`` is None where only the baseline failed (the reference wins there). The crossing
    is interpolated linearly in log(tokens)-log(ratio) between the last length where the
    reference is not better and the next one. Returns ``{"tokens", "note"}``; ``tokens`` is None
    when the reference is better everywhere measured (``note`` "below range") or not better at
    the longest length (``note`` "not reached").
    """
    if not tokens:
        return {"tokens": None, "note": "no data"}
    worse = [i for i, r in enumerate(ratio) if r is not None and r >= 1.0]
    if not worse:
        return {"tokens": None, "note": f"below range (better at all lengths >= {tokens[0]})"}
    i = worse[-1]
    if i == len(tokens) - 1:
        return {"tokens": None, "note": f"not reached (not better at {tokens[-1]} tokens)"}
    r0, r1 = ratio[i], ratio[i + 1]
    if r1 is None or r1 <= 0:  # the baseline failed at the next length
        return {"tokens": float(tokens[i + 1]), "note": "at most (the baseline failed here)"}
    x0, x1 = math.log(tokens[i]), math.log(tokens[i + 1])
    y0, y1 = math.log(r0), math.log(r1)
    x = x0 if y1 == y0 else x0 + (x1 - x0) * (0.0 - y0) / (y1 - y0)
    return {"tokens": math.exp(x), "note": "interpolated"}


def _pct_less(ref: float | None, base: float | None) -> float | None:
    if ref is None or base is None or base <= 0:
        return None
    return 100.0 * (1.0 - ref / base)


def summarize(
    points: Sequence[dict],
    reference: str | None = None,
    fit_min_tokens: int | None = DEFAULT_FIT_MIN_TOKENS,
) -> dict:
    """SSAMBA vs each other model at each length, break-even lengths and log-log exponents.

    ``reference``: the model compared against the others (default: the first SSAMBA model).
    For each other model and batch size, ``rows`` hold per length: ``speedup`` (baseline time /
    reference time, x), ``time_reduction_pct`` (100 * (1 - ref / baseline)), the same reduction
    for peak memory (``memory_reduction_pct``) and for the increment over the baseline RSS
    (``increment_reduction_pct``); lengths where only the baseline failed have its status and no
    ratios. ``break_even_time`` / ``break_even_memory``: see :func:`break_even`.
    ``exponents``: per model and batch, the log-log slopes of time, peak memory and memory
    increment vs tokens over the ok points with ``tokens >= fit_min_tokens`` (all ok points when
    fewer than 2 qualify). ``ssamba_memory_exponent``: the reference's increment slope.
    """
    pts = [p for p in points if p.get("model")]
    models = list(dict.fromkeys(p["model"] for p in pts))
    if reference is None:
        reference = next(
            (m for m in models if m.startswith("ssamba") or _arch(pts, m) == "ssamba"), None
        )
    batches = sorted({int(p["batch"]) for p in pts})
    table = {(p["model"], int(p["batch"]), int(p["tokens"])): p for p in pts}

    exponents = []
    for m in models:
        for b in batches:
            ok = sorted(
                (p for p in pts if p["model"] == m and int(p["batch"]) == b and _ok(p)),
                key=lambda p: int(p["tokens"]),
            )
            if not ok:
                continue
            fit = ok
            if fit_min_tokens:
                upper = [p for p in ok if int(p["tokens"]) >= fit_min_tokens]
                fit = upper if len(upper) >= 2 else ok
            xs = [int(p["tokens"]) for p in fit]
            exponents.append(
                {
                    "model": m,
                    "batch": b,
                    "time": fit_exponent(xs, [p.get("time_s") for p in fit]),
                    "peak_memory": fit_exponent(xs, [p.get("peak_mib") for p in fit]),
                    "memory_increment": fit_exponent(xs, [p.get("increment_mib") for p in fit]),
                    "fit_tokens": [xs[0], xs[-1]],
                    "fit_points": len(xs),
                }
            )

    comparisons = []
    if reference is not None:
        for base in (m for m in models if m != reference):
            for b in batches:
                rows = []
                lengths = sorted({t for (m, bb, t) in table if bb == b and m in (reference, base)})
                for t in lengths:
                    r, s = table.get((reference, b, t)), table.get((base, b, t))
                    if r is None or s is None or not _ok(r):
                        continue  # compared only where the reference ran
                    row = {"tokens": t, "baseline_status": s.get("status")}
                    row["ref_time_s"] = r.get("time_s")
                    row["ref_peak_mib"] = r.get("peak_mib")
                    row["ref_increment_mib"] = r.get("increment_mib")
                    if _ok(s):
                        row.update(
                            base_time_s=s.get("time_s"),
                            base_peak_mib=s.get("peak_mib"),
                            base_increment_mib=s.get("increment_mib"),
                            speedup=(s["time_s"] / r["time_s"]) if r.get("time_s") else None,
                            time_reduction_pct=_pct_less(r.get("time_s"), s.get("time_s")),
                            memory_reduction_pct=_pct_less(r.get("peak_mib"), s.get("peak_mib")),
                            increment_reduction_pct=_pct_less(
                                r.get("increment_mib"), s.get("increment_mib")
                            ),
                        )
                    rows.append(row)
                if not rows:
                    continue
                toks = [row["tokens"] for row in rows]

                def ratios(ref_key, base_key, rows=rows):
                    out = []
                    for row in rows:
                        if row["baseline_status"] != "ok":
                            out.append(None)
                        elif row.get(ref_key) and row.get(base_key):
                            out.append(row[ref_key] / row[base_key])
                        else:
                            out.append(1.0 if row.get(ref_key) == row.get(base_key) else None)
                    return out

                comparisons.append(
                    {
                        "reference": reference,
                        "baseline": base,
                        "batch": b,
                        "rows": rows,
                        "break_even_time": break_even(toks, ratios("ref_time_s", "base_time_s")),
                        "break_even_memory": break_even(
                            toks, ratios("ref_peak_mib", "base_peak_mib")
                        ),
                    }
                )
    ref_exp = next((e for e in exponents if e["model"] == reference), None)
    return {
        "reference": reference,
        "comparisons": comparisons,
        "exponents": exponents,
        "ssamba_memory_exponent": ref_exp["memory_increment"] if ref_exp else None,
        "fit_min_tokens": fit_min_tokens,
    }


def _ok(p: dict) -> bool:
    return p.get("status") == "ok" and p.get("time_s") is not None


def _arch(points: Sequence[dict], model: str) -> str | None:
    return next((p.get("arch") for p in points if p["model"] == model), None)


# --------------------------------------------------------------------------------------------------
# Report: Markdown and plot


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _cell_status(p: dict | None) -> str | None:
    if p is None:
        return "—"
    if p.get("status") != "ok":
        return {"oom": "OOM", "budget": "(budget)"}.get(p.get("status"), p.get("status"))
    return None


def markdown_report(points: Sequence[dict], summary: dict | None = None) -> str:
    """Markdown tables: time and memory per model and length, then SSAMBA vs each SSAST."""
    summary = summary if summary is not None else summarize(points)
    pts = [p for p in points if p.get("model")]
    models = list(dict.fromkeys(p["model"] for p in pts))
    table = {(p["model"], int(p["batch"]), int(p["tokens"])): p for p in pts}
    lines: list[str] = []
    for b in sorted({int(p["batch"]) for p in pts}):
        lengths = sorted({int(p["tokens"]) for p in pts if int(p["batch"]) == b})
        kind = next((p.get("memory_kind") for p in pts if p.get("memory_kind")), "rss")
        mem_name = "peak RSS" if kind == "rss" else "peak CUDA allocated"
        lines += [
            f"**Batch {b}**: median time per batch (s) | {mem_name} in MiB (increment over the "
            "model's baseline)",
            "",
            "| tokens | frames | "
            + " | ".join(f"{m} time" for m in models)
            + " | "
            + " | ".join(f"{m} memory" for m in models)
            + " |",
            "|---:|---:|" + "---:|" * (2 * len(models)),
        ]
        for t in lengths:
            tcells, mcells = [], []
            for m in models:
                p = table.get((m, b, t))
                bad = _cell_status(p)
                if bad is not None:
                    tcells.append(bad)
                    mcells.append(bad)
                else:
                    tcells.append(_fmt(p.get("time_s"), ".4g"))
                    mcells.append(
                        f"{_fmt(p.get('peak_mib'), '.0f')} (+{_fmt(p.get('increment_mib'), '.0f')})"
                    )
            lines.append(f"| {t} | {t // FREQ_PATCHES * PATCH} | " + " | ".join(tcells + mcells))
            lines[-1] += " |"
        lines.append("")
    for c in summary.get("comparisons", []):
        lines += [
            f"**{c['reference']} vs {c['baseline']}** (batch {c['batch']}): speed-up = "
            f"{c['baseline']} time / {c['reference']} time; reductions = 100 * (1 - "
            f"{c['reference']} / {c['baseline']})",
            "",
            "| tokens | speed-up (x) | time reduction % | peak memory reduction % | "
            "increment reduction % |",
            "|---:|---:|---:|---:|---:|",
        ]
        for row in c["rows"]:
            if row["baseline_status"] != "ok":
                what = _cell_status({"status": row["baseline_status"]})
                lines.append(f"| {row['tokens']} | {c['baseline']} {what} | | | |")
                continue
            lines.append(
                f"| {row['tokens']} | {_fmt(row.get('speedup'), '.2f')} | "
                f"{_fmt(row.get('time_reduction_pct'), '.1f')} | "
                f"{_fmt(row.get('memory_reduction_pct'), '.1f')} | "
                f"{_fmt(row.get('increment_reduction_pct'), '.1f')} |"
            )
        lines += [
            "",
            f"Break-even (time): {_fmt_break_even(c['break_even_time'])}; "
            f"break-even (peak memory): {_fmt_break_even(c['break_even_memory'])}.",
            "",
        ]
    if summary.get("exponents"):
        lines += [
            "Log-log slopes vs tokens (1 = linear, 2 = quadratic), fitted over the ok points with "
            f"tokens >= {summary.get('fit_min_tokens') or 0} (all ok points where fewer than two "
            "qualify):",
            "",
            "| model | batch | time | peak memory | memory increment | fit range (points) |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for e in summary["exponents"]:
            lines.append(
                f"| {e['model']} | {e['batch']} | {_fmt(e['time'], '.2f')} | "
                f"{_fmt(e['peak_memory'], '.2f')} | {_fmt(e['memory_increment'], '.2f')} | "
                f"{e['fit_tokens'][0]}-{e['fit_tokens'][1]} ({e['fit_points']}) |"
            )
        lines.append("")
    if summary.get("ssamba_memory_exponent") is not None:
        lines.append(
            f"{summary['reference']} memory (increment over baseline) grows as tokens^"
            f"{summary['ssamba_memory_exponent']:.2f}."
        )
    return "\n".join(lines).rstrip() + "\n"


def _fmt_break_even(be: dict) -> str:
    if be.get("tokens") is None:
        return be.get("note", "—")
    return f"~{be['tokens']:.0f} tokens ({be.get('note', '')})"


def plot(points: Sequence[dict], path: str | os.PathLike) -> Path:
    """Two log-log panels, time and peak memory vs tokens, one line per model (and batch).

    A failed point is marked with a cross at the top of the panel, labelled with its status.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    from matplotlib.transforms import blended_transform_factory

    pts = [p for p in points if p.get("model")]
    models = list(dict.fromkeys(p["model"] for p in pts))
    batches = sorted({int(p["batch"]) for p in pts})
    kind = next((p.get("memory_kind") for p in pts if p.get("memory_kind")), "rss")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (
        ("time_s", "time per batch (s)"),
        ("peak_mib", "peak memory (MiB, " + ("RSS" if kind == "rss" else "CUDA allocated") + ")"),
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ("-", "--", ":", "-.")
    for ax, (key, label) in zip(axes, panels, strict=True):
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        any_line = False
        for i, m in enumerate(models):
            for j, b in enumerate(batches):
                series = sorted(
                    (p for p in pts if p["model"] == m and int(p["batch"]) == b),
                    key=lambda p: int(p["tokens"]),
                )
                ok = [p for p in series if _ok(p) and p.get(key)]
                name = m if len(batches) == 1 else f"{m} (B={b})"
                color = colors[i % len(colors)]
                if ok:
                    any_line = True
                    ax.plot(
                        [int(p["tokens"]) for p in ok],
                        [p[key] for p in ok],
                        styles[j % len(styles)],
                        marker="o",
                        ms=4,
                        color=color,
                        label=name,
                    )
                for p in series:
                    if p.get("status") not in ("ok", "budget"):
                        ax.plot(
                            int(p["tokens"]),
                            0.97,
                            marker="x",
                            ms=9,
                            mew=2,
                            color=color,
                            transform=trans,
                            clip_on=False,
                        )
                        ax.annotate(
                            p["status"].upper(),
                            (int(p["tokens"]), 0.97),
                            xycoords=trans,
                            textcoords="offset points",
                            xytext=(0, -14 - 9 * i),
                            ha="center",
                            fontsize=7,
                            color=color,
                        )
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        if any_line:
            ax.set_yscale("log")
        ax.set_xlabel("input tokens (stride-16 patches)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="upper left")
    mode = next((p.get("mode") for p in pts), "inference")
    device = next((p.get("device") for p in pts), "cpu")
    fig.suptitle(f"{mode} on {device}" + (f", batch {batches[0]}" if len(batches) == 1 else ""))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", metavar="DIR", help="write bench.csv, bench.json, bench.png here")
    p.add_argument(
        "--models",
        metavar="LIST",
        help="comma-separated: ssamba_<size>, ssast_<size>, ssast_<size>_explicit (the "
        "reference's explicit N x N attention); default: all three of --size",
    )
    p.add_argument("--size", default="tiny", help="model size for the default models (tiny)")
    p.add_argument(
        "--tokens",
        default=",".join(map(str, DEFAULT_TOKENS)),
        metavar="LIST",
        help="patch-token counts, multiples of 8 (frames = tokens / 8 * 16); default %(default)s",
    )
    p.add_argument("--batch", default="4", metavar="LIST", help="batch size(s) (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per point (median; 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before them (1)")
    p.add_argument(
        "--mode",
        choices=("inference", "train"),
        default="inference",
        help="inference: eval, no gradients (the paper's measurement); train: forward + backward",
    )
    p.add_argument(
        "--timeout-per-point",
        type=float,
        default=600.0,
        metavar="S",
        help="kill a point's worker after S seconds, status 'timeout' (default 600; 0: none)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="bound the whole run: points not finished in M minutes get status 'budget'",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads in each worker (default: all available cores; numba follows)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default)")
    p.add_argument(
        "--max-memory-gb",
        type=float,
        metavar="G",
        help="address-space cap (RLIMIT_AS) per worker, set after model creation; a point "
        "that needs more is 'oom' (default: 75%% of physical memory on the CPU; 0: no cap)",
    )
    p.add_argument("--depth", type=int, metavar="N", help="override every model's depth (tests)")
    p.add_argument(
        "--scan",
        choices=("reference", "cpu", "cuda"),
        help="force the SSAMBA scan backend (sets SSAMBA_SCAN in the workers)",
    )
    p.add_argument(
        "--fit-min-tokens",
        type=int,
        default=DEFAULT_FIT_MIN_TOKENS,
        metavar="N",
        help="fit the log-log exponents over points with at least N tokens (default %(default)s)",
    )
    p.add_argument(
        "--from",
        dest="from_results",
        metavar="PATH",
        help="do not measure: re-summarise and re-plot an earlier bench.json/bench.csv",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write bench.png")


def add_bench_parser(subparsers) -> None:
    """Register ``ssamba bench`` (for :mod:`ssamba.cli`)."""
    p = subparsers.add_parser(
        "bench",
        help="time and peak memory of SSAMBA vs SSAST as the input gets longer",
        description=(
            "Sweep the input length (stride-16 patch tokens) and batch size for each model, one "
            "fresh process per point, and record the median time and peak memory of a fine-tuning "
            "forward pass (or a training step). Writes bench.csv, bench.json and bench.png to "
            "--out and prints Markdown tables: SSAMBA vs each SSAST per length, the break-even "
            "length and the log-log exponents."
        ),
    )
    add_arguments(p)
    p.set_defaults(func=run_bench_command)


def run_bench_command(args: argparse.Namespace) -> int:
    """``ssamba bench``: parse-level checks, the sweep (or ``--from``), the printed report."""
    error = _command_error()
    if args.from_results:
        try:
            points = load_points(args.from_results)
        except (OSError, KeyError, ValueError) as e:
            raise error(f"cannot read {args.from_results}: {e}") from None
        summary = summarize(points, fit_min_tokens=args.fit_min_tokens)
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            src = Path(args.from_results)
            src = src / "bench.json" if src.is_dir() else src
            meta = json.loads(src.read_text()) if src.suffix == ".json" else {}
            meta.pop("points", None)
            meta.pop("summary", None)
            write_results(points, out, meta, args.fit_min_tokens)
            if not args.no_plot:
                plot(points, out / "bench.png")
        print(markdown_report(points, summary))
        return 0
    if not args.out:
        raise error("--out DIR is required (where bench.csv, bench.json and bench.png go)")
    max_memory = "auto" if args.max_memory_gb is None else (args.max_memory_gb or None)
    try:
        points = run_bench(
            args.models,
            args.tokens,
            args.batch,
            size=args.size,
            repeats=args.repeats,
            warmup=args.warmup,
            mode=args.mode,
            timeout_per_point=args.timeout_per_point or None,
            max_minutes=args.max_minutes,
            threads=args.threads,
            device=args.device,
            max_memory_gb=max_memory,
            depth=args.depth,
            scan=args.scan,
            out=args.out,
            command=getattr(args, "command_line", None),
            fit_min_tokens=args.fit_min_tokens,
            make_plot=not args.no_plot,
        )
    except ValueError as e:
        raise error(str(e)) from None
    print()
    print(markdown_report(points, summarize(points, fit_min_tokens=args.fit_min_tokens)))
    print(
        f"wrote {Path(args.out) / 'bench.csv'}, bench.json"
        + ("" if args.no_plot else ", bench.png")
    )
    return 0


def _command_error() -> type[Exception]:
    from ssamba.cli import CommandError

    return CommandError


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ssamba.bench ...``: the same options as ``ssamba bench`` (and the worker)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        if len(argv) != 2:
            print("usage: python -m ssamba.bench --worker SPEC.json", file=sys.stderr)
            return 2
        return _worker_main(argv[1])
    parser = argparse.ArgumentParser(
        prog="python -m ssamba.bench", description=__doc__.split("\n")[0]
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.command_line = shlex.join([Path(sys.executable).name, "-m", "ssamba.bench", *argv])
    try:
        return run_bench_command(args)
    except _command_error() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

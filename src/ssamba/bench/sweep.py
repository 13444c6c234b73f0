"""The sweep: every (batch, length, model) point in a fresh worker process, interleaved.

For each length every model runs in turn, so a CPU whose speed drifts over minutes hurts all
models alike and a ``max_minutes`` budget covers the same lengths for every model. A model's
sweep (at one batch size) stops at its first failure; the other models go on.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ssamba.bench.machine import available_cores, default_memory_cap, loadavg, machine_info
from ssamba.bench.plotting import plot
from ssamba.bench.report import write_results
from ssamba.bench.spec import (
    DEFAULT_FIT_MIN_TOKENS,
    DEFAULT_TOKENS,
    DEVICES,
    MODES,
    PLOT_FILE,
    default_models,
    frames_for_tokens,
    int_list,
    parse_model,
)
from ssamba.bench.worker import run_worker

_SRC = str(Path(__file__).resolve().parents[2])  # the folder holding the ssamba package


def _log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Plan:
    """A sweep's settings, checked and made explicit (what bench.json records)."""

    models: list[str]
    tokens: list[int]
    batch: list[int]
    size: str
    repeats: int
    warmup: int
    mode: str
    timeout_per_point: float | None
    max_minutes: float | None
    threads: int
    device: str
    max_memory_gb: float | None
    depth: int | None
    scan: str | None
    seed: int
    fit_min_tokens: int | None

    def equivalent_command(self) -> str:
        """An ``ssamba bench`` command line that repeats this run (every setting explicit)."""
        argv = ["ssamba", "bench", "--models", ",".join(self.models), "--size", self.size]
        argv += ["--tokens", ",".join(map(str, self.tokens))]
        argv += ["--batch", ",".join(map(str, self.batch))]
        argv += ["--repeats", str(self.repeats), "--warmup", str(self.warmup), "--mode", self.mode]
        argv += ["--timeout-per-point", f"{self.timeout_per_point or 0:g}"]
        argv += ["--threads", str(self.threads), "--device", self.device]
        argv += ["--max-memory-gb", f"{self.max_memory_gb or 0:g}"]
        if self.max_minutes:
            argv += ["--max-minutes", f"{self.max_minutes:g}"]
        if self.depth:
            argv += ["--depth", str(self.depth)]
        if self.scan:
            argv += ["--scan", self.scan]
        if self.fit_min_tokens != DEFAULT_FIT_MIN_TOKENS:
            argv += ["--fit-min-tokens", str(self.fit_min_tokens or 0)]
        return shlex.join(argv + ["--out", "DIR"])


def _check(mode: str, device: str, repeats: int, warmup: int) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'inference' or 'train', got {mode!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")


def _model_specs(models, size: str, depth: int | None) -> list[dict]:
    if isinstance(models, str):
        models = [m for m in models.replace(" ", "").split(",") if m]
    specs = [parse_model(m, size) for m in (models or default_models(size))]
    names = [s["name"] for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a model is listed twice: {', '.join(names)}")
    if depth is not None and depth % 2 and any(s["arch"] == "ssamba" for s in specs):
        raise ValueError(f"depth {depth} is odd: bidirectional SSAMBA uses layers in pairs")
    return specs


def _memory_cap(max_memory_gb: float | str | None, device: str) -> float | None:
    if max_memory_gb == "auto":  # an address-space cap means nothing for device memory
        max_memory_gb = None if device == "cuda" else default_memory_cap()
    return float(max_memory_gb) if max_memory_gb else None


def _worker_env(threads: int, scan: str | None) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if scan:
        env["SSAMBA_SCAN"] = scan
    # The workers import this very package, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC, env.get("PYTHONPATH")) if p)
    return env


def _meta(plan: Plan, command: str | None) -> dict:
    settings = asdict(plan)
    settings["scan"] = plan.scan or os.environ.get("SSAMBA_SCAN") or "auto"
    return {
        "command": command if command is not None else shlex.join(sys.argv),
        "equivalent_command": plan.equivalent_command(),
        "argv": list(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(plan.device),
        "settings": settings,
    }


def _new_point(plan: Plan, s: dict, batch: int, tokens: int) -> dict:
    return {
        "model": s["name"],
        "arch": s["arch"],
        "attention": s["attention"],
        "batch": batch,
        "tokens": tokens,
        "frames": frames_for_tokens(tokens),
        "mode": plan.mode,
        "device": plan.device,
        "repeats": plan.repeats,
        "warmup": plan.warmup,
        "max_memory_gb": plan.max_memory_gb,
        "load_1m": loadavg(),
    }


def _worker_spec(plan: Plan, s: dict, batch: int, tokens: int) -> dict:
    return dict(
        model=s["name"],
        size=plan.size,
        tokens=tokens,
        batch=batch,
        repeats=plan.repeats,
        warmup=plan.warmup,
        mode=plan.mode,
        device=plan.device,
        threads=plan.threads,
        depth=plan.depth,
        max_memory_gb=plan.max_memory_gb,
        seed=plan.seed,
    )


def describe(p: dict) -> str:
    """One log line for a finished point."""
    head = f"{p['model']:<22} B={p['batch']:<3} tokens={p['tokens']:<6} (T={p['frames']}): "
    if p["status"] != "ok":
        return head + p["status"].upper()
    scan = f" [{p['scan_backend']}]" if p.get("scan_backend") else ""
    return head + (
        f"{p['time_s']:.4g} s, peak {p['peak_mib']:.0f} MiB "
        f"(+{p['increment_mib']:.0f} over {p['baseline_mib']:.0f}){scan}"
    )


def _measure(plan: Plan, s: dict, b: int, t: int, timeout: float | None, env, tmp) -> dict:
    """One point, run by its worker; a timeout that only the run's budget imposed is ``budget``."""
    result = run_worker(_worker_spec(plan, s, b, t), timeout, env, tmp)
    cut_by_budget = plan.timeout_per_point is None or timeout < plan.timeout_per_point
    if result["status"] == "timeout" and plan.max_minutes and cut_by_budget:
        result.update(status="budget", error="--max-minutes reached during the point")
    return {**_new_point(plan, s, b, t), **result}


def _sweep(plan, specs, env, deadline, points: list[dict], on_point, log) -> None:
    """Measure the points in interleaved order, appending each to ``points`` as it finishes."""
    stopped: set[tuple[str, int]] = set()  # (model, batch) whose sweep has ended
    todo = [(b, t, s) for b in plan.batch for t in plan.tokens for s in specs]
    with tempfile.TemporaryDirectory(prefix="ssamba-bench-") as tmpdir:
        for k, (b, t, s) in enumerate(todo, 1):
            if (s["name"], b) in stopped:
                continue
            timeout = plan.timeout_per_point
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 1:
                    point = {**_new_point(plan, s, b, t), "status": "budget"}
                    points.append({**point, "error": "--max-minutes reached"})
                    stopped.add((s["name"], b))
                    continue
                timeout = left if timeout is None or left < timeout else timeout
            point = _measure(plan, s, b, t, timeout, env, Path(tmpdir))
            points.append(point)
            log(f"[{k}/{len(todo)}] {describe(point)}")
            if point["status"] != "ok":
                stopped.add((s["name"], b))
                log(f"    {s['name']} (batch {b}) stops here: {point.get('error', '')}")
            on_point(points)


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
    ``"train"`` (train mode, forward + backward, no optimizer). ``device``: ``"cpu"`` or
    ``"cuda"`` (peak memory from ``torch.cuda.max_memory_allocated``, synchronised timing).
    ``timeout_per_point`` bounds each worker (start-up, priming, warm-up and repeats);
    ``max_minutes`` the whole run. ``threads``: torch threads in the workers (default: all
    available cores; the numba scan follows torch). ``max_memory_gb``: address-space cap
    (RLIMIT_AS) set in each worker after model creation; ``"auto"`` is 75 % of physical memory
    on the CPU and no cap on CUDA, ``None`` or 0 no cap. ``depth``: override the models' depth
    (tests). ``scan``: force a scan backend (SSAMBA_SCAN) in the workers; each SSAMBA point
    records the backend that ran (``scan_backend``).

    Writes ``bench.csv`` and ``bench.json`` after every point and ``bench.png`` at the end when
    ``out`` is given. Returns the points (dicts with the :data:`CSV_FIELDS` and ``times``).
    """
    log = log or (lambda _msg: None)
    _check(mode, device, repeats, warmup)
    specs = _model_specs(models, size, depth)
    token_list = sorted(set(int_list(tokens, "tokens")))
    for t in token_list:
        frames_for_tokens(t)
    plan = Plan(
        models=[s["name"] for s in specs],
        tokens=token_list,
        batch=int_list(batch, "batch"),
        size=size,
        repeats=repeats,
        warmup=warmup,
        mode=mode,
        timeout_per_point=timeout_per_point,
        max_minutes=max_minutes,
        threads=int(threads) if threads else available_cores(),
        device=device,
        max_memory_gb=_memory_cap(max_memory_gb, device),
        depth=depth,
        scan=scan,
        seed=seed,
        fit_min_tokens=fit_min_tokens,
    )
    return _run(plan, specs, Path(out) if out is not None else None, command, make_plot, log)


def _run(plan: Plan, specs, out_dir: Path | None, command, make_plot: bool, log) -> list[dict]:
    """Measure the plan's points, saving after each one; the files are complete even when the
    sweep is interrupted (Ctrl-C, SIGTERM) or fails."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    meta = _meta(plan, command)
    cap = f"{plan.max_memory_gb:g} GiB" if plan.max_memory_gb else "none"
    log(
        f"ssamba bench: {len(specs)} model(s) x {len(plan.tokens)} length(s) x "
        f"{len(plan.batch)} batch size(s), {plan.mode}, {plan.device}, {plan.threads} "
        f"thread(s), memory cap {cap}"
    )

    def save(points: list[dict]) -> None:
        if out_dir is not None:
            write_results(points, out_dir, meta, plan.fit_min_tokens)

    deadline = time.monotonic() + plan.max_minutes * 60 if plan.max_minutes else None
    points: list[dict] = []
    try:
        _sweep(plan, specs, _worker_env(plan.threads, plan.scan), deadline, points, save, log)
    finally:
        meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        meta["load_1m_end"] = loadavg()
        if out_dir is not None and points:
            save(points)
            if make_plot:
                _plot(points, out_dir, log)
    return points


def _plot(points: list[dict], out_dir: Path, log) -> None:
    try:
        plot(points, out_dir / PLOT_FILE)
    except ImportError:
        log("matplotlib is not installed: no bench.png (pip install 'ssamba[plot]')")

"""SSAMBA-tiny and SSAST-tiny on 1 and 2 CPU threads, interleaved, in one process.

    PYTHONPATH=src .venv/bin/python benchmarks/thread_scaling.py [--rounds 7] [--json FILE] \
        [--profile]

The training step (forward + BCE-style backward, batch 2, 512 tokens, stride 16, 527-class head:
the official benchmarks' shapes, as ``ssamba bench --mode train``) and the inference pass of both
models. This machine's speed drifts by up to 40% from one minute to the next, so the four
configurations (model x threads) take turns, one step each, round after round, and every figure
is a median over the rounds: the times, the scaling (1-thread time / 2-thread time) and the
SSAMBA / SSAST ratio, each computed within a round first. Both models are built once, after a
warm-up step in every configuration (the numba kernels compile or load from their cache there).
Run it on an otherwise idle machine.

``--profile`` then times one kernel dispatch (a tiny conv call through its C entry) and profiles
SSAMBA-tiny's training step on 1 and 2 threads: the operations with
the most time of their own (torch.profiler; the numba kernels show as their autograd functions,
``_SelectiveScanCPU``, ``_ConvSilu`` and their backwards) and the CPU time of every OS thread of
the process over a few steps against the wall time (a second thread that only spins, or only
waits, shows here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ssamba.allocator import keep_freed_memory
from ssamba.bench.spec import NUM_CLASSES, frames_for_tokens
from ssamba.bench.worker import make_step
from ssamba.constants import NUM_MEL_BINS, PATCH
from ssamba.models import create_model

MODELS = ("ssamba_tiny", "ssast_tiny")
THREADS = (1, 2)


def build(name: str, tokens: int, train: bool):
    model = create_model(name, num_classes=NUM_CLASSES, input_tdim=frames_for_tokens(tokens),
                         fstride=PATCH, tstride=PATCH, pretrain_heads=False)  # fmt: skip
    return model.train(train)


def measure(mode: str, tokens: int, batch: int, rounds: int, seed: int = 0) -> dict:
    """Per configuration, the time of one step in each round (after one warm-up step each)."""
    train = mode == "train"
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames_for_tokens(tokens), NUM_MEL_BINS, generator=gen)
    steps = {m: make_step(build(m, tokens, train), train) for m in MODELS}
    times: dict[str, list[float]] = {f"{m}@{t}": [] for m in MODELS for t in THREADS}
    for r in range(rounds + 1):
        for m in MODELS:
            for t in THREADS:
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                steps[m](x)
                if r:  # round 0 is the warm-up
                    times[f"{m}@{t}"].append(time.perf_counter() - t0)
    return times


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of each OS thread of this process, by thread id (Linux)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def profile(tokens: int, batch: int, steps: int = 4, top: int = 12) -> dict:
    """SSAMBA-tiny's training step on 1 and 2 threads: top operations by own CPU time (per
    step) and each OS thread's CPU seconds per step against the wall time per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = torch.randn(batch, frames_for_tokens(tokens), NUM_MEL_BINS,
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    step = make_step(build("ssamba_tiny", tokens, True), True)
    result = {}
    for t in THREADS:
        torch.set_num_threads(t)
        step(x)  # warm-up at this thread count
        before, t0 = thread_cpu_seconds(), time.perf_counter()
        for _ in range(steps):
            step(x)
        wall = (time.perf_counter() - t0) / steps
        after = thread_cpu_seconds()
        busy = sorted(((after[k] - before.get(k, 0.0)) / steps for k in after), reverse=True)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step(x)
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        result[t] = {
            "wall_s_per_step": wall,
            "thread_cpu_s_per_step": [round(b, 3) for b in busy if b > 0.005],
            "top_ops_self_cpu_s_per_step": {
                e.key: round(e.self_cpu_time_total / 2e6, 4) for e in ops[:top]
            },
        }
    return result


def dispatch_cost(calls: int = 2000, repeats: int = 5) -> dict:
    """Microseconds per kernel dispatch on 1 and 2 threads: a conv + silu call on a tiny input
    (2 x 9 steps x 384 channels, two work items: the kernel's own work is a few microseconds),
    through its C entry as the model runs it. Medians of ``repeats``."""
    from ssamba.ops import conv_cpu
    from ssamba.ops.cpu_threads import run_parallel

    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=gen) for s in ((2, 9, 384), (384, 1, 4), (384,)))
    call, _ = conv_cpu._conv_call(x, 0, 384, w, b, False, conv_cpu.SILU)
    out = {}
    for t in THREADS:
        torch.set_num_threads(t)
        for _ in range(50):
            run_parallel([call])
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                run_parallel([call])
            runs.append((time.perf_counter() - t0) / calls * 1e6)
        out[f"c_entry@{t}"] = round(statistics.median(runs), 1)
    return out


def profile_table(prof: dict) -> str:
    keys = list(prof[THREADS[0]]["top_ops_self_cpu_s_per_step"])
    lines = ["| operation (own CPU time, s per step) | 1 thread | 2 threads |", "|---|---:|---:|"]
    for k in keys:
        cells = [prof[t]["top_ops_self_cpu_s_per_step"].get(k) for t in THREADS]
        lines.append(f"| `{k}` | " + " | ".join("" if c is None else f"{c:.3f}" for c in cells)
                     + " |")  # fmt: skip
    lines.append("| wall time per step | " + " | ".join(
        f"{prof[t]['wall_s_per_step']:.3f}" for t in THREADS) + " |")  # fmt: skip
    lines.append("| CPU s per step of each busy OS thread | " + " | ".join(
        ", ".join(f"{c:.2f}" for c in prof[t]["thread_cpu_s_per_step"]) for t in THREADS
    ) + " |")  # fmt: skip
    return "\n".join(lines)


def summarize(times: dict[str, list[float]]) -> dict:
    """Medians over rounds of each time, of each model's scaling and of SSAMBA / SSAST."""
    med = {k: statistics.median(v) for k, v in times.items()}
    rounds = range(len(next(iter(times.values()))))
    out = {"median_s": med}
    for m in MODELS:
        out[f"{m} scaling"] = statistics.median(
            times[f"{m}@1"][r] / times[f"{m}@2"][r] for r in rounds
        )
    for t in THREADS:
        out[f"ssamba/ssast @{t}"] = statistics.median(
            times[f"ssamba_tiny@{t}"][r] / times[f"ssast_tiny@{t}"][r] for r in rounds
        )
    return out


def table(results: dict) -> str:
    lines = ["| pass | model | 1 thread (s) | 2 threads (s) | scaling |",
             "|---|---|---:|---:|---:|"]  # fmt: skip
    for mode, res in results.items():
        s = res["summary"]
        for m in MODELS:
            lines.append(f"| {mode} | {m} | {s['median_s'][m + '@1']:.3f} | "
                         f"{s['median_s'][m + '@2']:.3f} | {s[m + ' scaling']:.2f}x |")  # fmt: skip
        lines.append(f"| {mode} | SSAMBA / SSAST | {s['ssamba/ssast @1']:.2f}x | "
                     f"{s['ssamba/ssast @2']:.2f}x | |")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed rounds (default: 7)")
    ap.add_argument("--tokens", type=int, default=512, help="(default: 512)")
    ap.add_argument("--batch", type=int, default=2, help="(default: 2)")
    ap.add_argument("--modes", default="train,inference", help="(default: train,inference)")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw times here")
    ap.add_argument("--profile", action="store_true",
                    help="then profile SSAMBA's training step on 1 and 2 threads")  # fmt: skip
    args = ap.parse_args()
    keep_freed_memory()  # as the ssamba command does
    results = {}
    for mode in args.modes.split(","):
        times = measure(mode, args.tokens, args.batch, args.rounds)
        results[mode] = {"times": times, "summary": summarize(times)}
    from ssamba.ops.cpu_threads import dispatch

    meta = {"tokens": args.tokens, "batch": args.batch, "rounds": args.rounds,
            "kernel_dispatch": dispatch(), "torch": torch.__version__,
            "load_1m": os.getloadavg()[0]}  # fmt: skip
    prof = profile(args.tokens, args.batch) if args.profile else None
    if args.profile:
        meta["dispatch_us"] = dispatch_cost()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        raw = {"meta": meta, "results": results, "profile": prof}
        args.json.write_text(json.dumps(raw, indent=1))
    print(meta)
    print(table(results))
    if prof:
        print()
        print(profile_table(prof))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

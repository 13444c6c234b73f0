"""Pretraining throughput: one full joint step (two masked passes, backward, AdamW) per timing.

    python benchmarks/bench_pretrain.py [--models ssamba_tiny,ssast_tiny] [--frames 100,1024]
        [--batch 8] [--precisions fp32,bf16] [--repeats 3] [--warmup 1]
    python benchmarks/bench_pretrain.py --device cuda --precision bf16 --frames 1024 --batch 64 \
        --warmup 3 --repeats 10 --max-seconds 60 --json pretrain.json

Prints a Markdown table of clips/s and tokens/s (median over the timed steps, after the warm-up
steps) and, per clip length and precision, the clips/s ratio of each model to the last one listed
(SSAMBA-tiny / SSAST-tiny by default). Models and settings are interleaved in each repeat so that
machine drift affects them alike.

The batches are synthetic fbank tensors already on the device (no audio decoding, no loader), so
the figure is the model's and the optimiser's. The masks are drawn before timing, from a small
pool, because the cluster masks are drawn in Python on the CPU (about 15 ms per pass of 64 clips
here): the same cost for every model, which would only dilute the comparison on a GPU. The time
one step's masks take is reported as ``mask_s``. On CUDA the optimiser is fused AdamW, each timed
step ends with a device synchronisation, and the peak of torch.cuda.max_memory_allocated is
recorded. ``--max-seconds`` stops the timed rounds early (each model keeps at least one step);
``--json`` is rewritten after every round, so a run cut short still leaves its figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

import ssamba
from ssamba.constants import NUM_MEL_BINS
from ssamba.ops.scan import resolve_backend
from ssamba.pretrain import MaskedPatchObjective, default_mask_patch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MASK_POOL = 4  # distinct mask pairs cycled through the timed steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _draw_masks(model, fbank, m: int, rng: random.Random) -> tuple[list, float]:
    """A pool of (discriminative, generative) mask pairs; the seconds one pair took."""
    t0 = time.perf_counter()
    pool = [
        (model.draw_mask(fbank, m, rng=rng), model.draw_mask(fbank, m, rng=rng))
        for _ in range(MASK_POOL)
    ]
    return pool, (time.perf_counter() - t0) / MASK_POOL


def _optimizer(model, device: torch.device):
    if device.type == "cuda":  # one kernel for all parameters (torch >= 2.0)
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    return torch.optim.AdamW(model.parameters(), lr=1e-4)


def _scaler(precision: str, device: torch.device):
    """fp16 needs loss scaling; bf16 and fp32 do not."""
    if precision != "fp16":
        return None
    if device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device (use bf16 on the CPU)")
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):  # torch >= 2.3
        return amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def make_step(name, frames: int, batch: int, precision: str, device, depth: int | None = None):
    """One pretraining step of model ``name`` on a synthetic batch; returns (step, info)."""
    torch.manual_seed(0)
    overrides = {"depth": depth} if depth else {}
    model = ssamba.create_model(name, input_tdim=frames, **overrides).to(device).train()
    objective = MaskedPatchObjective(model, "joint", 10.0)
    optimizer, scaler = _optimizer(model, device), _scaler(precision, device)
    fbank = torch.randn(batch, frames, NUM_MEL_BINS, device=device)
    grid = model.grid
    mask_patch = default_mask_patch(grid[0] * grid[1])
    pool, mask_s = _draw_masks(model, fbank, mask_patch, random.Random(0))
    dtype = DTYPES[precision]
    calls = [0]

    def autocast():
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=dtype)

    def step():
        mask_c, mask_g = pool[calls[0] % len(pool)]
        calls[0] += 1
        with autocast():
            loss, _ = objective(fbank, mask_c, mask_g)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)

    arch = model.config.arch
    info = {
        "tokens": grid[0] * grid[1],
        "mask_s": mask_s,
        "params": model.num_parameters(),
        "scan_backend": resolve_backend(device) if arch == "ssamba" else "",
    }
    return step, info


def _error(e: BaseException) -> dict:
    oom = isinstance(e, MemoryError) or "out of memory" in str(e).lower()
    return {"status": "oom" if oom else "error", "error": f"{type(e).__name__}: {e}"[:300]}


def _setup(points, args, device) -> dict:
    """Build every point and run its warm-up steps; a point that fails records why. The baseline
    (last model) goes first, so a slow warm-up of the others cannot leave it unmeasured."""
    steps = {}
    for pt in reversed(points):
        try:
            step, info = make_step(
                pt["model"], pt["frames"], args.batch, pt["precision"], device, args.depth
            )
            pt.update(info)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            for _ in range(args.warmup):  # kernel compilation, allocator, autotuning
                step()
            pt["warmup_s"] = time.perf_counter() - t0
            if device.type == "cuda" and args.warmup:
                # This point's steps, plus the weights and optimiser states of the points built
                # before it (small next to the activations of a batch).
                pt["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
            pt["status"] = "ok"
            steps[id(pt)] = step
        except Exception as e:  # noqa: BLE001 - reported with the point, the others go on
            pt.update(_error(e))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return steps


def _timed_rounds(points, steps, args, device, save) -> None:
    """Interleaved timed steps until --repeats rounds or --max-seconds (at least one round)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_start = time.perf_counter()
    for k in range(args.repeats):
        if k and args.max_seconds and time.perf_counter() - t_start > args.max_seconds:
            break
        for pt in points:
            if pt.get("status") != "ok":
                continue
            t = time.perf_counter()
            try:
                steps[id(pt)]()
            except Exception as e:  # noqa: BLE001
                pt.update(_error(e))
                continue
            pt.setdefault("times", []).append(time.perf_counter() - t)
        _summarise(points, args.batch, device)
        save()


def _summarise(points, batch: int, device: torch.device) -> None:
    for pt in points:
        if pt.get("times"):
            sec = statistics.median(pt["times"])
            pt.update(s_per_step=sec, clips_per_s=batch / sec)
            pt["tokens_per_s"] = batch * pt["tokens"] / sec
    if device.type == "cuda":  # the peak over all models: they share the device
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        for pt in points:
            pt["peak_mib_all"] = peak


def ratios(points: list[dict], models: list[str]) -> list[dict]:
    """clips/s of each model over the last model's, per clip length and precision."""
    out = []
    base = models[-1]
    for frames in dict.fromkeys(p["frames"] for p in points):
        for prec in dict.fromkeys(p["precision"] for p in points):
            key = (frames, prec)
            same = {p["model"]: p for p in points if (p["frames"], p["precision"]) == key}
            b = same.get(base, {}).get("clips_per_s")
            for m in models[:-1]:
                a = same.get(m, {}).get("clips_per_s")
                ratio = a / b if a and b else None
                out.append({"model": m, "baseline": base, "frames": frames, "precision": prec,
                            "clips_per_s_ratio": ratio})  # fmt: skip
    return out


def _environment(device: torch.device, batch: int) -> dict:
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "device": str(device),
        "batch": batch,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def print_table(points, doc) -> None:
    env = doc["environment"]
    print(f"torch {env['torch']}, {env['threads']} threads, {env.get('gpu') or env['cpu']}")
    print(f"batch {env['batch']}, median of the timed steps (n in the table)\n")
    print("| model | clip | precision | scan | s/step | clips/s | tokens/s | n |")
    print("|---|---|---|---|---|---|---|---|")
    for pt in points:
        clip = f"{pt['frames'] / 100:.2f} s ({pt['frames']} frames)"
        head = f"| {pt['model']} | {clip} | {pt['precision']} | {pt.get('scan_backend') or ''} |"
        if not pt.get("times"):
            print(f"{head} {pt.get('status', 'not run').upper()} | | | |")
            continue
        print(
            f"{head} {pt['s_per_step']:.3f} | {pt['clips_per_s']:.1f} | "
            f"{pt['tokens_per_s']:.0f} | {len(pt['times'])} |"
        )
    for r in doc["ratios"]:
        value = "—" if r["clips_per_s_ratio"] is None else f"{r['clips_per_s_ratio']:.2f}"
        print(f"\n{r['model']} / {r['baseline']} clips/s at {r['frames']} frames, "
              f"{r['precision']}: {value}", end="")  # fmt: skip
    print()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--models", default="ssamba_tiny,ssast_tiny", help="the last is the baseline")
    p.add_argument("--frames", default="100,1024", help="clip lengths in frames (10 ms)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precisions", "--precision", dest="precisions", default="fp32,bf16",
                   help="comma-separated: fp32, bf16, fp16 (CUDA only)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per point first")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (one step per point)")
    p.add_argument("--max-seconds", type=float, default=0, help="stop timing after S s (0: no)")
    p.add_argument("--depth", type=int, help="override the models' depth (quick checks)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    models = args.models.split(",")
    points = [
        {"model": m, "frames": int(f), "precision": prec, "batch": args.batch}
        for m in models
        for f in args.frames.split(",")
        for prec in args.precisions.split(",")
    ]
    doc = {"environment": _environment(device, args.batch), "points": points, "ratios": []}

    def save():
        doc["ratios"] = ratios(points, models)
        if args.json:
            Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")

    save()
    steps = _setup(points, args, device)
    save()
    _timed_rounds(points, steps, args, device, save)
    print_table(points, doc)
    return 0 if all(p.get("times") for p in points) else 1


if __name__ == "__main__":
    raise SystemExit(main())

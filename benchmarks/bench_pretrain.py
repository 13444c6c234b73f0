"""Pretraining throughput: one full joint step (two masked passes, backward, AdamW) per timing.

    python benchmarks/bench_pretrain.py [--models ssamba_tiny,ssast_tiny] [--frames 100,1024]
        [--batch 8] [--precisions fp32,bf16] [--repeats 3]

Prints a Markdown table of clips/s and tokens/s (median over repeats, after one warm-up step).
Models and settings are interleaved in each repeat so machine drift affects them alike.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch

import ssamba
from ssamba.pretrain import MaskedPatchObjective, default_mask_patch


def make_step(name: str, frames: int, batch: int, precision: str):
    torch.manual_seed(0)
    model = ssamba.create_model(name, input_tdim=frames).train()
    objective = MaskedPatchObjective(model, "joint", 10.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fbank = torch.randn(batch, frames, 128)
    grid = model.grid
    m = default_mask_patch(grid[0] * grid[1])
    rng = random.Random(0)

    def step():
        mask_c = model.draw_mask(fbank, m, rng=rng)
        mask_g = model.draw_mask(fbank, m, rng=rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = objective(fbank, mask_c, mask_g)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, grid[0] * grid[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="ssamba_tiny,ssast_tiny")
    p.add_argument("--frames", default="100,1024", help="clip lengths in frames (10 ms)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    points = [
        (m, int(f), prec)
        for m in args.models.split(",")
        for f in args.frames.split(",")
        for prec in args.precisions.split(",")
    ]
    steps, times = {}, {pt: [] for pt in points}
    for pt in points:
        steps[pt] = make_step(pt[0], pt[1], args.batch, pt[2])
        steps[pt][0]()  # warm-up (and kernel compilation)
    for _ in range(args.repeats):
        for pt in points:
            t = time.perf_counter()
            steps[pt][0]()
            times[pt].append(time.perf_counter() - t)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor()}")
    print(f"batch {args.batch}, median of {args.repeats} steps\n")
    print("| model | clip | precision | s/step | clips/s | tokens/s |")
    print("|---|---|---|---|---|---|")
    for pt in points:
        sec = statistics.median(times[pt])
        tokens = steps[pt][1]
        print(
            f"| {pt[0]} | {pt[1] / 100:.2f} s ({pt[1]} frames) | {pt[2]} | {sec:.2f} | "
            f"{args.batch / sec:.1f} | {args.batch * tokens / sec:.0f} |"
        )


if __name__ == "__main__":
    main()

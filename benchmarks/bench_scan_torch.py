"""The torch parallel scan against the step-by-step reference on this CPU, forward + backward.

    python benchmarks/bench_scan_torch.py [--length 512] [--batch 2] [--channels 384]

One thread, fp32, d_state 16. The two are interleaved (torch best of 5, reference once, twice
over) so that a drifting VM clock affects both alike; the ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ssamba.ops.scan import selective_scan_ref  # noqa: E402
from ssamba.ops.scan_torch import selective_scan_torch  # noqa: E402


def inputs(batch: int, length: int, chans: int, n_state: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    u, delta, z = (
        r(batch, length, chans),
        r(batch, length, chans) * 0.5 - 1.0,
        r(batch, length, chans),
    )
    A, B, C = (
        -torch.exp(r(chans, n_state) * 0.5),
        r(batch, length, n_state),
        r(batch, length, n_state),
    )
    return [u, delta, A, B, C, r(chans), z, r(chans) * 0.3]


def seconds(fn, args) -> float:
    leaves = [a.clone().requires_grad_() for a in args]
    start = time.perf_counter()
    fn(*leaves).sum().backward()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=384)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    args = inputs(a.batch, a.length, a.channels)
    seconds(selective_scan_torch, args)  # warm-up
    for round_ in (1, 2):
        fast = min(seconds(selective_scan_torch, args) for _ in range(5))
        slow = seconds(selective_scan_ref, args)
        fast = min(fast, *(seconds(selective_scan_torch, args) for _ in range(5)))
        print(
            f"round {round_}: torch {fast:.3f} s, reference {slow:.2f} s, ratio {slow / fast:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the selective scan: PyTorch reference vs the fused numba CPU backend.

    python benchmarks/bench_scan.py            # batch 4, d_inner 384, d_state 16, L 512 and 2048
    python benchmarks/bench_scan.py --targets  # the CPU targets' table: 1 thread, cpu backend,
                                               # L 512, 2048, 8192, fwd and fwd+bwd

Prints a Markdown table: milliseconds per call, G state-updates/s (batch * D * L * N / time), the
speed-up over the reference, and 2-thread scaling; when L = 512 and 8192 are both run, the ratio
of their fwd+bwd rates (the cost per token should not grow with length); plus two machine limits
measured in the same run (torch.exp in cache on one thread, a streaming copy). Variants run
interleaved, best of ``--repeats``, because a shared VM's clock drifts. ``--clock cpu`` times the
calling thread's CPU time instead of wall time (1 thread only): steadier on a loaded machine, but
it leaves out time the thread waits, e.g. for page faults served elsewhere.
``--keep-freed-memory`` makes glibc serve large allocations from its heap and keep freed memory
(mallopt), so that the (batch, L, D) outputs of long scans stop costing one page fault per 4 KiB
on every call (see docs/scan.md): the library itself leaves the process's allocator alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ssamba.allocator import keep_freed_memory
from ssamba.ops.scan import selective_scan_ref
from ssamba.ops.scan_cpu import selective_scan_cpu


def make_inputs(batch, length, chans, n_state, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, chans, generator=g)
    delta = torch.randn(batch, length, chans, generator=g) * 0.5 - 1.0
    A = -torch.exp(torch.randn(chans, n_state, generator=g) * 0.5)
    B = torch.randn(batch, length, n_state, generator=g)
    C = torch.randn(batch, length, n_state, generator=g)
    D = torch.randn(chans, generator=g)
    z = torch.randn(batch, length, chans, generator=g)
    bias = torch.randn(chans, generator=g) * 0.3
    return [u, delta, A, B, C, D, z, bias]


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
TARGET_LENGTHS = (512, 2048, 8192)


def best_time(fn, repeats, clock=time.perf_counter):
    fn()  # warm-up (and numba compile / cache load on the first call)
    best = float("inf")
    for _ in range(repeats):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def forward(scan, args):
    def run():
        with torch.no_grad():
            scan(*args)

    return run


def forward_backward(scan, args):
    leaves = [a.clone().requires_grad_() for a in args]

    def run():
        for p in leaves:
            p.grad = None
        scan(*leaves).sum().backward()

    return run


def machine_limits(repeats):
    """torch.exp in L1/L2 on one thread, and a streaming copy (elements/s, fp32)."""
    torch.set_num_threads(1)
    small = torch.randn(1 << 14)
    out = torch.empty_like(small)
    t = best_time(lambda: [torch.exp(small, out=out) for _ in range(100)], repeats)
    exp_rate = 100 * small.numel() / t
    big = torch.randn(1 << 25)  # 128 MiB: far beyond the caches
    dst = torch.empty_like(big)
    t = best_time(lambda: dst.copy_(big), repeats)
    return exp_rate, big.numel() / t


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--d-inner", type=int, default=384)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ref-max-length", type=int, default=512,
                   help="time the (slow) reference only up to this length; 0: never")  # fmt: skip
    p.add_argument("--ref-repeats", type=int, default=1)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="glibc mallopt: large blocks from the heap, freed memory kept")  # fmt: skip
    lengths = " ".join(map(str, TARGET_LENGTHS))
    p.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    p.add_argument("--targets", action="store_true",
                   help=f"lengths {lengths}, 1 thread, no reference")  # fmt: skip
    a = p.parse_args()
    if a.targets:
        a.lengths, a.threads, a.ref_max_length = list(TARGET_LENGTHS), [1], 0
    if a.clock == "cpu" and a.threads != [1]:
        sys.exit("--clock cpu measures one thread: use --threads 1")
    return a


def measure(a):
    """Rows (L, pass, backend, threads, ms, G updates/s, vs reference, vs 1 thread)."""
    clock = CLOCKS[a.clock]
    rows = []
    for length in a.lengths:
        args = make_inputs(a.batch, length, a.d_inner, a.d_state)
        updates = a.batch * a.d_inner * length * a.d_state
        for mode, make in (("fwd", forward), ("fwd+bwd", forward_backward)):
            times = {}
            for th in a.threads:
                torch.set_num_threads(th)
                times[("cpu", th)] = best_time(make(selective_scan_cpu, args), a.repeats, clock)
                if length <= a.ref_max_length:
                    times[("reference", th)] = best_time(
                        make(selective_scan_ref, args), a.ref_repeats, clock
                    )
            for (backend, th), t in times.items():
                ref = times.get(("reference", th))
                one = times.get((backend, 1))
                rows.append((length, mode, backend, th, t * 1e3, updates / t / 1e9,
                             f"{ref / t:.0f}x" if ref and backend == "cpu" else "",
                             f"{one / t:.2f}x" if one and th != 1 else ""))  # fmt: skip
    return rows


def length_ratio(rows, short=512, long=8192):
    """fwd+bwd G updates/s at ``long`` over that at ``short`` (cpu, 1 thread), or None."""
    rate = {r[0]: r[5] for r in rows if r[1:4] == ("fwd+bwd", "cpu", 1)}
    return rate[long] / rate[short] if short in rate and long in rate else None


def main():
    a = parse_args()
    if a.keep_freed_memory and not keep_freed_memory():
        sys.exit("mallopt refused the thresholds (not glibc?)")
    rows = measure(a)
    alloc = "; glibc keeps freed memory" if a.keep_freed_memory else ""
    print(f"batch {a.batch}, d_inner {a.d_inner}, d_state {a.d_state}, fp32; {a.clock} clock, "
          f"best of {a.repeats} (reference: {a.ref_repeats}){alloc}\n")  # fmt: skip
    print("| L | pass | backend | threads | ms | G updates/s | vs reference | vs 1 thread |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.1f} | {r[5]:.3f} | {r[6]} | {r[7]} |")
    ratio = length_ratio(rows)
    if ratio is not None:
        print(f"\nfwd+bwd, 1 thread: G updates/s at L = 8192 / at L = 512 = {ratio:.2f}")
    if a.json:
        keys = ("L", "pass", "backend", "threads", "ms", "gups")
        with open(a.json, "w") as f:
            json.dump({"settings": vars(a), "rows": [dict(zip(keys, r[:6], strict=True))
                                                     for r in rows]}, f, indent=1)  # fmt: skip
    exp_rate, copy_rate = machine_limits(a.repeats)
    print(f"\nMachine limits (1 thread): torch.exp in cache {exp_rate / 1e9:.2f} G/s; "
          f"streaming copy {copy_rate / 1e9:.2f} G fp32 elements/s")  # fmt: skip


if __name__ == "__main__":
    main()

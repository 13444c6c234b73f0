"""Selective-scan throughput on a device: Triton kernels vs the torch parallel scan vs the
reference loop, against the memory-bandwidth ceiling of an ideal kernel.

    python benchmarks/bench_scan_gpu.py --device cuda --out DIR [--quick]
    python benchmarks/bench_scan_gpu.py --device cpu --out DIR --batch 1 --lengths 64 \
        --channels 64 --max-seconds 60          (smoke run)

Per (batch, L, D) and backend: forward and forward+backward time, G state updates/s
(batch * L * D * N / s). Ceiling: an ideal kernel moves each tensor once (forward: read u,
delta, z, B, C, write y; backward: read those and dy, write du, ddelta, dz, dB, dC; bytes of the
input dtype; A, D, delta_bias are negligible), so at the device bandwidth (measured here with a
large ``tensor.copy_``) it runs at most ``updates / (bytes / bandwidth)`` updates/s; "fraction" is
the measured rate over that ceiling. The reference runs only forward+backward, at the smallest
batch and L <= 2048 (it is a Python loop). The run stops starting new measurements after
``--max-seconds``. Writes ``scan_gpu.csv`` and ``scan_gpu.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ssamba.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from ssamba.ops import scan_backends  # noqa: E402
from ssamba.ops.scan import selective_scan  # noqa: E402

FIELDS = ["backend", "pass", "batch", "length", "channels", "state", "dtype", "ms",
          "g_updates_s", "ceiling_g_updates_s", "fraction", "note"]  # fmt: skip


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device):
    """Bytes/s of a large device-to-device copy (read + write counted)."""
    n = ((1024 if device.type == "cuda" else 128) * 2**20) // 4  # MiB -> fp32 elements
    src = torch.empty(n, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best


def ideal_bytes(batch, length, chans, state, elt, backward):
    ld, ln = batch * length * chans, batch * length * state
    fwd = (3 * ld + 2 * ln + ld) * elt  # read u, delta, z, B, C; write y
    if not backward:
        return fwd
    bwd = (4 * ld + 2 * ln + 3 * ld + 2 * ln) * elt  # read u, delta, z, dy, B, C; write grads
    return fwd + bwd


def make_inputs(batch, length, chans, state, dtype, device, grad):
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    args = [randn(batch, length, chans), randn(batch, length, chans) * 0.5 - 1.0,
            -torch.exp(randn(chans, state, dt=torch.float32) * 0.5),
            randn(batch, length, state), randn(batch, length, state),
            randn(chans, dt=torch.float32), randn(batch, length, chans),
            randn(chans, dt=torch.float32) * 0.3]  # fmt: skip
    if grad:
        args = [a.requires_grad_() for a in args]
    return args


def time_call(fn, device, repeats):
    fn()  # warm-up (Triton compiles here)
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def run_one(backend, backward, shape, dtype, device, repeats):
    batch, length, chans, state = shape
    args = make_inputs(batch, length, chans, state, dtype, device, backward)
    if backward:
        dy = torch.randn(batch, length, chans, device=device, dtype=dtype)

        def fn():
            y = selective_scan(*args, backend=backend)
            y.backward(dy)

    else:

        def fn():
            with torch.no_grad():
                selective_scan(*args, backend=backend)

    return time_call(fn, device, repeats)


def save(out: Path, rows: list[dict], meta: dict) -> None:
    """Write scan_gpu.csv and scan_gpu.json (each replaced whole)."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "scan_gpu.csv", buf.getvalue())
    atomic_write_json(out / "scan_gpu.json", dict(meta=meta, rows=rows))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quick", action="store_true", help="batch 4, L 512/2048, D 384 only")
    p.add_argument("--batch", type=int, nargs="+", default=[4, 16])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192, 16384])
    p.add_argument("--channels", type=int, nargs="+", default=[384, 768])
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--backends", nargs="+", default=["triton", "torch", "reference"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=900.0)
    a = p.parse_args(argv)
    if a.quick:
        a.batch, a.lengths, a.channels = [4], [512, 2048], [384]
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype)
    elt = torch.empty(0, dtype=dtype).element_size()
    start = time.perf_counter()
    bandwidth = measure_bandwidth(device)
    info = scan_backends(device)
    print(f"device {device}: copy bandwidth {bandwidth / 1e9:.1f} GB/s; backends: "
          + ", ".join(f"{n}={'yes' if e['available'] else 'no'}"
                      for n, e in info["backends"].items()))  # fmt: skip
    meta = dict(device=str(device), device_name=(torch.cuda.get_device_name(device)
                if device.type == "cuda" else platform.processor() or platform.machine()),
                torch=torch.__version__, bandwidth_gb_s=round(bandwidth / 1e9, 2),
                backends=info)  # fmt: skip
    rows = []
    for batch in a.batch:
        for chans in a.channels:
            for length in a.lengths:
                shape = (batch, length, chans, a.state)
                updates = batch * length * chans * a.state
                for backend in a.backends:
                    for backward in (False, True):
                        row = dict(backend=backend, batch=batch, length=length, channels=chans,
                                   state=a.state, dtype=a.dtype,
                                   **{"pass": "fwd+bwd" if backward else "fwd"})  # fmt: skip
                        if backend == "reference" and (
                            not backward or length > 2048 or batch != min(a.batch)
                        ):
                            continue
                        reason = info["backends"][backend]["reason"]
                        if time.perf_counter() - start > a.max_seconds:
                            row["note"] = "skipped: --max-seconds reached"
                        elif reason is not None:
                            row["note"] = f"unavailable: {reason}"
                        else:
                            try:
                                sec = run_one(
                                    backend,
                                    backward,
                                    shape,
                                    dtype,
                                    device,
                                    1 if backend == "reference" else a.repeats,
                                )
                            except (torch.cuda.OutOfMemoryError, MemoryError) as err:
                                row["note"] = f"out of memory: {str(err).splitlines()[0]}"
                            else:
                                ceiling = updates / (
                                    ideal_bytes(batch, length, chans, a.state, elt, backward)
                                    / bandwidth
                                )
                                row.update(ms=round(sec * 1e3, 3),
                                           g_updates_s=round(updates / sec / 1e9, 4),
                                           ceiling_g_updates_s=round(ceiling / 1e9, 2),
                                           fraction=round(updates / sec / ceiling, 4))  # fmt: skip
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                        rows.append(row)
                        print(" | ".join(str(row.get(k, "")) for k in FIELDS), flush=True)
                        # after every row: a run killed by its time limit keeps what it measured
                        meta["seconds"] = round(time.perf_counter() - start, 1)
                        save(a.out, rows, meta)
    print(f"wrote {a.out / 'scan_gpu.csv'} and {a.out / 'scan_gpu.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

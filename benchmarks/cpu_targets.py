"""SSAMBA on the CPU (one thread, and one against two) against its targets, from one sitting.

    PYTHONPATH=src .venv/bin/python benchmarks/cpu_targets.py --out /tmp/cpu_targets [--quick]

Runs, one after the other, on an otherwise idle machine (check the load first):

1. ``benchmarks/bench_scan.py``: the numba selective scan, forward and forward + backward, at
   L = 512, 2048, 8192 (batch 4, d_inner 384, d_state 16, fp32, one thread), with glibc's
   default allocator settings and with freed memory kept (what the ``ssamba`` command runs with,
   ``ssamba.allocator``).
2. ``ssamba bench --mode train``: one training step (forward + backward) of SSAMBA-tiny,
   SSAST-tiny (``scaled_dot_product_attention``) and SSAST-tiny with the reference's explicit
   attention matrix, 512 tokens, batch 2, one thread.
3. ``ssamba bench --mode inference``: the same models at 512 ... 22016 tokens, batch 2, one thread
   (explicit attention only up to 2048 tokens: its N x N matrix makes it slow and huge beyond).
4. ``benchmarks/thread_scaling.py``: SSAMBA-tiny and SSAST-tiny (sdpa), training step and
   inference at 512 tokens, batch 2, on 1 and 2 threads, the four configurations taking turns
   round after round in one process; medians over the rounds (``--rounds``, default 7).

Each ``ssamba bench`` point runs in a fresh process (time: median of the timed runs; memory: peak
RSS and its increment over the loaded, primed model). Writes OUT/targets.json and
OUT/targets.md (the table of targets with measured values and ratios), and keeps every raw
output under OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHORT = [512, 2048]
LONG = [4096, 8192, 22016]
QUICK_LONG = [4096, 8192]


def _run(cmd: list[str], log: Path, threads: int | None = 1) -> None:
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OMP_NUM_THREADS", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.time()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    print(f"  {time.time() - t0:.0f} s -> {log}", flush=True)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): see {log}")


def _bench(out: Path, name: str, models: str, tokens: list[int], mode: str, repeats: int,
           warmup: int) -> list[dict]:  # fmt: skip
    folder = out / name
    cmd = [sys.executable, "-m", "ssamba", "bench", "--models", models, "--batch", "2",
           "--threads", "1", "--mode", mode, "--tokens", ",".join(map(str, tokens)),
           "--repeats", str(repeats), "--warmup", str(warmup), "--timeout-per-point", "900",
           "--out", str(folder), "--overwrite", "--no-progress"]  # fmt: skip
    _run(cmd, out / f"{name}.log")
    return json.loads((folder / "bench.json").read_text())["points"]


def _point(points: list[dict], model: str, tokens: int, mode: str) -> dict:
    for p in points:
        if p["model"] == model and p["tokens"] == tokens and p["mode"] == mode:
            return p
    return {}


def measure(out: Path, quick: bool, rounds: int) -> dict:
    lengths = ["512", "2048"] if quick else ["512", "2048", "8192"]
    scans = {}
    for name, extra in (("scan", []), ("scan_kept", ["--keep-freed-memory"])):
        _run([sys.executable, "benchmarks/bench_scan.py", "--threads", "1", "--lengths", *lengths,
              "--ref-max-length", "0", "--json", str(out / f"{name}.json"), *extra],
             out / f"{name}.log")  # fmt: skip
        scans[name] = json.loads((out / f"{name}.json").read_text())
    pts = _bench(out, "train", "ssamba_tiny,ssast_tiny,ssast_tiny_explicit", [512], "train", 3, 1)
    pts += _bench(out, "inference_short", "ssamba_tiny,ssast_tiny,ssast_tiny_explicit", SHORT,
                  "inference", 5, 1)  # fmt: skip
    long = QUICK_LONG if quick else LONG
    pts += _bench(out, "inference_long", "ssamba_tiny,ssast_tiny", long, "inference", 1, 0)
    _run([sys.executable, "benchmarks/thread_scaling.py", "--rounds", str(rounds), "--json",
          str(out / "threads.json")], out / "threads.log", threads=None)  # fmt: skip
    threads = json.loads((out / "threads.json").read_text())
    return {**scans, "points": pts, "long": long, "threads": threads}


def _ratio(a: dict, b: dict, key: str) -> float | None:
    if a.get("status") != "ok" or b.get("status") != "ok" or not b.get(key):
        return None
    return a[key] / b[key]


def targets(raw: dict) -> list[tuple[str, str, str, bool | None]]:
    """(target, measured, limit, met) rows."""
    pts = raw["points"]
    rows = []
    for name, how in (("scan", "glibc defaults"), ("scan_kept", "freed memory kept")):
        scan = {(r["L"], r["pass"]): r for r in raw[name]["rows"] if r["backend"] == "cpu"}
        g512 = scan[(512, "fwd+bwd")]["gups"]
        rows.append((f"scan fwd+bwd at L = 512, G updates/s per thread ({how})", f"{g512:.3f}",
                     ">= 0.3", g512 >= 0.3))  # fmt: skip
        if (8192, "fwd+bwd") in scan:
            g8k = scan[(8192, "fwd+bwd")]["gups"]
            measured = f"{g8k / g512:.2f}x ({g8k:.3f} G/s)"
            rows.append((f"scan fwd+bwd at L = 8192 vs L = 512 ({how})", measured, ">= 0.90x",
                         g8k / g512 >= 0.9))  # fmt: skip
    last = raw["long"][-1]
    inf = {t: _point(pts, "ssamba_tiny", t, "inference") for t in SHORT + raw["long"]}
    per_token = {t: p["time_s"] / t for t, p in inf.items() if p.get("status") == "ok"}
    if 2048 in per_token and 8192 in per_token:
        r = per_token[8192] / per_token[2048]
        rows.append(("SSAMBA inference time per token, 8192 vs 2048 tokens", f"{r:.2f}x",
                     "<= 1.1x", r <= 1.1))  # fmt: skip
    tr = _ratio(_point(pts, "ssamba_tiny", 512, "train"), _point(pts, "ssast_tiny", 512, "train"),
                "time_s")  # fmt: skip
    rows.append(("training step, SSAMBA-tiny / SSAST-tiny (sdpa), 512 tokens", _x(tr), "<= 3.5x",
                 None if tr is None else tr <= 3.5))  # fmt: skip
    ir = _ratio(inf[512], _point(pts, "ssast_tiny", 512, "inference"), "time_s")
    rows.append(("inference, SSAMBA-tiny / SSAST-tiny (sdpa), 512 tokens", _x(ir), "<= 3.4x",
                 None if ir is None else ir <= 3.4))  # fmt: skip
    for t in raw["long"]:
        m = _ratio(inf[t], _point(pts, "ssast_tiny", t, "inference"), "increment_mib")
        limit = 0.5 if t == last and t >= 22016 else 1.0
        rows.append((f"inference memory increment, SSAMBA / SSAST (sdpa), {t} tokens", _x(m),
                     f"<= {limit:g}x", None if m is None else m <= limit))  # fmt: skip
    if "threads" in raw:
        train = raw["threads"]["results"]["train"]["summary"]
        scaling = train["ssamba_tiny scaling"]
        rows.append(("training step SSAMBA-tiny, 2 threads against 1 (512 tokens, batch 2)",
                     _x(scaling), ">= 1.8x", scaling >= 1.8))  # fmt: skip
        ratio = train["ssamba/ssast @2"]
        rows.append(("training step SSAMBA-tiny / SSAST-tiny (sdpa), 2 threads", _x(ratio),
                     "<= 2.5x", ratio <= 2.5))  # fmt: skip
    return rows


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def tables(raw: dict) -> str:
    lines = ["| pass | tokens | model | time (s) | peak RSS (MiB) | increment (MiB) |",
             "|---|---:|---|---:|---:|---:|"]  # fmt: skip
    for p in sorted(raw["points"], key=lambda p: (p["mode"], p["tokens"], p["model"])):
        if p.get("status") != "ok":
            lines.append(f"| {p['mode']} | {p['tokens']} | {p['model']} | {p['status']} | | |")
            continue
        lines.append(f"| {p['mode']} | {p['tokens']} | {p['model']} | {p['time_s']:.3f} | "
                     f"{p['peak_mib']:.0f} | {p['increment_mib']:.0f} |")  # fmt: skip
    if "threads" in raw:
        from thread_scaling import table as thread_table

        lines += ["", thread_table(raw["threads"]["results"])]
    lines += ["", "| target | measured | limit | met? |", "|---|---|---|---|"]
    for name, measured, limit, met in targets(raw):
        verdict = "n/a" if met is None else "yes" if met else "no"
        lines.append(f"| {name} | {measured} | {limit} | {verdict} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="up to 8192 tokens, L up to 2048")
    p.add_argument("--from-raw", action="store_true", help="re-render OUT/targets.json")
    p.add_argument("--rounds", type=int, default=7,
                   help="interleaved rounds of the thread-scaling step (default: 7)")  # fmt: skip
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_raw:
        raw = json.loads((args.out / "targets.json").read_text())
    else:
        load = os.getloadavg()[0]
        t0 = time.time()
        raw = measure(args.out, args.quick, args.rounds)
        raw.update(load_1m_start=load, load_1m_end=os.getloadavg()[0],
                   minutes=round((time.time() - t0) / 60, 1))  # fmt: skip
        (args.out / "targets.json").write_text(json.dumps(raw, indent=1))
    text = tables(raw)
    (args.out / "targets.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

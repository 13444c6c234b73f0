"""The two Python halves of benchmarks/gpu_check.sh.

    python3 benchmarks/gpu_summary.py env ENV.json
        the environment: Python, torch, triton, the GPU, which packages import, the scan backends
        (imports torch: run it once, at the start);
    python3 benchmarks/gpu_summary.py summary --work WORK --out OUT
        reads the stage outputs in WORK (status.tsv, env.json, the stage logs, scan/, bench/,
        pretrain.json), writes summary.md and summary.json, copies the results into OUT (flat, at
        most 8 files: what the device tool brings back) and prints summary.md. Standard library
        only, so it runs even when torch cannot be imported.

The targets (issue 13) it reads off the results:
- Triton scan forward+backward at least 40 % of the bandwidth-bound ceiling at L >= 2k;
- at ~22k tokens SSAMBA-tiny at least 90 % less time and 90 % less memory than SSAST-tiny with
  explicit attention, and faster than SSAST-tiny with sdpa/flash from 4k tokens on;
- pretraining throughput of SSAMBA-tiny at least 0.5x SSAST-tiny at 10-s clips.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LONG_TOKENS = 22528  # ~22k tokens: the paper's length (multiple of 8, 45056 frames)
SCAN_TARGET = 0.40
REDUCTION_TARGET = 90.0
PRETRAIN_TARGET = 0.5
OUT_FILES = (  # everything the check leaves in OUT (the device tool returns at most 8 files)
    "summary.md",
    "summary.json",
    "log.txt",
    "scan.csv",
    "bench.csv",
    "bench.json",
    "bench.png",
    "pretrain.json",
)
LOG_BYTES_PER_STAGE = 60_000


# ------------------------------------------------------------------------------ env
def _version_of(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _imports(names) -> dict:
    found = {}
    for name in names:
        try:
            __import__(name)
            found[name] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            found[name] = f"{type(e).__name__}: {e}"[:200]
    return found


def _scan_backends(torch) -> dict:
    """The scan dispatch's own report (the listing function where it exists)."""
    try:
        from ssamba.ops import scan
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if hasattr(scan, "scan_backends"):
        return scan.scan_backends(device)
    out = {"device": str(device), "available": scan.available_backends()}
    try:
        out["selected"] = scan.resolve_backend(device)
    except ValueError as e:
        out["error"] = str(e)
    return out


def collect_env(path: str) -> int:
    info: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": os.environ.get("GPU_CHECK_COMMIT") or None,
        "packages": {n: _version_of(n) for n in ("torch", "triton", "numba", "numpy")},
    }
    info["imports"] = _imports(("soundfile", "soxr", "safetensors", "tqdm", "matplotlib"))
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 1024**3, 1)
            info["capability"] = f"{props.major}.{props.minor}"
            info["cuda"] = torch.version.cuda
        info["scan"] = _scan_backends(torch)
    except Exception as e:  # noqa: BLE001 - the summary says torch is broken
        info["torch_error"] = f"{type(e).__name__}: {e}"[:300]
        info["cuda_available"] = False
    Path(path).write_text(json.dumps(info, indent=2, default=str) + "\n")
    print(json.dumps({k: info.get(k) for k in ("torch", "gpu", "cuda_available", "scan")}))
    return 0


# ------------------------------------------------------------------------------ reading stages
def read_status(path: Path) -> list[dict]:
    """status.tsv: stage, status, seconds, exit code, note (one line per stage)."""
    stages = []
    if not path.exists():
        return stages
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            parts += [""] * (5 - len(parts))
            stages.append(
                {"stage": parts[0], "status": parts[1], "seconds": parts[2], "rc": parts[3],
                 "note": parts[4]}
            )  # fmt: skip
    return stages


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests_result(log: Path) -> str | None:
    """pytest's last summary line ("12 passed, 2 skipped in 3.1s"), if any."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    found = re.findall(r"^=*\s*(\d+ \w+.* in [\d.]+s.*?)\s*=*$", text, re.M)
    return found[-1] if found else None


def _num(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if x == x else None  # NaN is no figure


def _column(fields, *patterns) -> str | None:
    for pat in patterns:
        for f in fields:
            if re.fullmatch(pat, f.strip().lower()):
                return f
    return None


def scan_bandwidth(folder: Path) -> float | None:
    """The device bandwidth (GB/s) the scan benchmark measured, from its JSON's ``meta``."""
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        doc = _read_json(path)
        if isinstance(doc, dict) and isinstance(doc.get("meta"), dict):
            return _num(doc["meta"].get("bandwidth_gb_s"))
    return None


def _scan_rows(folder: Path) -> tuple[list[dict], Path | None]:
    """The scan benchmark's rows (CSV preferred, else a JSON list or {"rows"/"points": [...]})."""
    if not folder.is_dir():
        return [], None
    for path in sorted(folder.glob("*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows:
            return rows, path
    for path in sorted(folder.glob("*.json")):
        doc = _read_json(path)
        if isinstance(doc, dict):
            doc = doc.get("rows") or doc.get("points") or doc.get("results")
        if isinstance(doc, list) and doc and isinstance(doc[0], dict):
            return doc, path
    return [], None


def scan_figures(rows: list[dict]) -> dict:
    """Triton forward+backward as a fraction of the bandwidth ceiling at L >= 2048.

    The column names are looked for loosely (backend/impl, pass/direction/mode, L/length/seqlen,
    a fraction or percent of the ceiling), so the summary survives small changes of the scan
    benchmark's table."""
    if not rows:
        return {"found": False, "note": "no scan results"}
    fields = list(rows[0])
    backend = _column(fields, r".*backend.*", r"impl.*", r"variant", r"kernel")
    kind = _column(fields, r"pass", r".*direction.*", r"mode", r"what", r"op")
    length = _column(fields, r"l", r"length", r"seq_?len", r"seqlen", r"t", r"tokens")
    frac = _column(fields, r".*frac.*", r".*of_ceiling.*", r".*ceiling_pct.*", r".*efficiency.*")
    found = {"backend": backend, "pass": kind, "length": length, "fraction": frac}
    if not all(found.values()):
        return {"found": False, "note": f"columns not recognised: {fields}", "columns": found}
    values = []
    for r in rows:
        is_bwd = re.search(r"b(ac)?kw|bwd|fwd\+bwd|fwd_bwd|train", str(r[kind]).lower())
        x, n = _num(r[frac]), _num(r[length])
        if "triton" in str(r[backend]).lower() and is_bwd and x is not None and (n or 0) >= 2048:
            values.append(x / 100 if x > 1.5 else x)  # a percent column
    if not values:
        return {"found": False, "note": "no Triton forward+backward rows at L >= 2048"}
    values.sort()
    return {
        "found": True,
        "min": values[0],
        "median": values[len(values) // 2],
        "max": values[-1],
        "rows": len(values),
        "met": values[0] >= SCAN_TARGET,
    }


def _comparison(summary: dict, baseline: str) -> dict | None:
    return next((c for c in summary.get("comparisons", []) if c["baseline"] == baseline), None)


def _nearest_row(rows: list[dict], tokens: int) -> dict | None:
    return min(rows, key=lambda r: abs(r["tokens"] - tokens)) if rows else None


def bench_figures(doc: dict | None) -> dict:
    """SSAMBA vs SSAST explicit at ~22k tokens, vs SSAST sdpa from 4k, and who ran what."""
    if not doc:
        return {"found": False, "note": "no bench.json"}
    points, summary = doc.get("points", []), doc.get("summary", {})
    ref = summary.get("reference") or "ssamba_tiny"
    out: dict = {"found": True, "reference": ref}
    out["scan_backend"] = sorted(
        {p.get("scan_backend") for p in points if p["model"] == ref and p.get("scan_backend")}
    )
    out["statuses"] = {
        m: [f"{p['tokens']}:{p['status']}" for p in points if p["model"] == m]
        for m in dict.fromkeys(p["model"] for p in points)
    }
    comparisons = summary.get("comparisons", [])
    explicit = next((c for c in comparisons if "explicit" in c["baseline"]), None)
    if explicit:
        row = _nearest_row([r for r in explicit["rows"] if r["tokens"] >= 16384], LONG_TOKENS)
        out["long"] = _long_row(row, explicit["baseline"]) if row else None
    sdpa = next((c for c in comparisons if "explicit" not in c["baseline"]), None)
    if sdpa:
        from4k = [r for r in sdpa["rows"] if r["tokens"] >= 4096]
        out["sdpa_baseline"] = sdpa["baseline"]
        out["sdpa_speedups"] = {r["tokens"]: r.get("speedup") for r in from4k}
        out["sdpa_from_4k_met"] = bool(from4k) and all(
            (r.get("speedup") or 0) > 1 or r["baseline_status"] != "ok" for r in from4k
        )
        out["sdpa_break_even"] = sdpa.get("break_even_time")
    return out


def _long_row(row: dict, baseline: str) -> dict:
    """The ~22k-token comparison: reductions, or the baseline's failure (which counts as met)."""
    failed = row["baseline_status"] != "ok"
    time_red, mem_red = row.get("time_reduction_pct"), row.get("memory_reduction_pct")
    return {
        "tokens": row["tokens"],
        "baseline": baseline,
        "baseline_status": row["baseline_status"],
        "time_reduction_pct": time_red,
        "memory_reduction_pct": mem_red,
        "time_met": failed or (time_red is not None and time_red >= REDUCTION_TARGET),
        "memory_met": failed or (mem_red is not None and mem_red >= REDUCTION_TARGET),
    }


def pretrain_figures(doc: dict | None) -> dict:
    if not doc:
        return {"found": False, "note": "no pretrain.json"}
    pts = {f"{p['model']}@{p['frames']}/{p['precision']}": p for p in doc.get("points", [])}
    out = {
        "found": True,
        "clips_per_s": {k: p.get("clips_per_s") for k, p in pts.items()},
        "status": {k: p.get("status", "not run") for k, p in pts.items()},
        "scan_backend": sorted({p["scan_backend"] for p in pts.values() if p.get("scan_backend")}),
        "ratios": doc.get("ratios", []),
    }
    # The target's setting (10-s clips = 1024 frames, bf16) where it was measured, else the first.
    usable = [r for r in out["ratios"] if r.get("clips_per_s_ratio")]
    best = [r for r in usable if (r["frames"], r["precision"]) == (1024, "bf16")] or usable
    ratio = best[0]["clips_per_s_ratio"] if best else None
    out["ratio"] = ratio
    out["met"] = None if ratio is None else ratio >= PRETRAIN_TARGET
    return out


# ------------------------------------------------------------------------------ writing
def _f(v, spec=".2f", none="—") -> str:
    return none if v is None else format(v, spec)


def _met(flag) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


SCAN_GOAL = "Triton scan fwd+bwd >= 40 % of the bandwidth ceiling at L >= 2k"
LONG_GOAL = "~22k tokens: >= 90 % less {} than SSAST-tiny explicit"
SDPA_GOAL = "faster than SSAST-tiny sdpa/flash from 4k tokens on"
PRETRAIN_GOAL = "pretraining clips/s SSAMBA-tiny >= 0.5x SSAST-tiny (10-s clips, bf16)"


def _scan_target(scan: dict) -> tuple[str, str, str]:
    if not scan.get("found"):
        return SCAN_GOAL, scan.get("note", "not measured"), "n/a"
    what = f"min {scan['min']:.0%}, median {scan['median']:.0%} ({scan['rows']} rows)"
    return SCAN_GOAL, what, _met(scan["met"])


def _long_targets(long: dict | None) -> list[tuple[str, str, str]]:
    if not long:
        return [(LONG_GOAL.format("time and memory"), "not measured (no point >= 16k)", "n/a")]
    if long["baseline_status"] != "ok":
        what = f"{long['baseline']} {long['baseline_status'].upper()} at {long['tokens']} tokens"
        return [(LONG_GOAL.format("time and memory"), what, "yes (the baseline fails)")]
    at = f" ({long['tokens']} tokens)"
    return [
        (LONG_GOAL.format("time") + at, f"{_f(long['time_reduction_pct'], '.1f')} %",
         _met(long["time_met"])),
        (LONG_GOAL.format("memory") + at, f"{_f(long['memory_reduction_pct'], '.1f')} %",
         _met(long["memory_met"])),
    ]  # fmt: skip


def targets(scan: dict, bench: dict, pretrain: dict) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for each of issue 13's targets."""
    rows = [_scan_target(scan)] + _long_targets(bench.get("long"))
    if bench.get("sdpa_speedups"):
        what = ", ".join(f"{t}: {_f(s)}x" for t, s in bench["sdpa_speedups"].items())
        rows.append((SDPA_GOAL, what, _met(bench["sdpa_from_4k_met"])))
    else:
        rows.append((SDPA_GOAL, "not measured", "n/a"))
    if pretrain.get("ratio"):
        rows.append((PRETRAIN_GOAL, f"{pretrain['ratio']:.2f}x", _met(pretrain["met"])))
    else:
        rows.append((PRETRAIN_GOAL, pretrain.get("note", "not measured"), "n/a"))
    return rows


def _quick(rows: list[tuple[str, str, str]], quick: bool) -> list[tuple[str, str, str]]:
    """At the quick check's tiny sizes the figures test the plumbing, not the targets."""
    return [(a, b, "n/a (quick sizes)") for a, b, _ in rows] if quick else rows


def _overview(doc: dict) -> list[str]:
    """The date, the machine, each stage's status and figures, and the targets."""
    env = doc["env"]
    gpu = env.get("gpu") or ("no CUDA device" if env else "unknown")
    lines = [
        f"# gpu_check: {env.get('date') or time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"GPU: {gpu}; torch {env.get('torch') or env.get('packages', {}).get('torch')}; "
        f"triton {env.get('packages', {}).get('triton')}; CUDA {env.get('cuda')}; "
        f"Python {env.get('python')}; commit {env.get('commit') or 'unknown'}; "
        f"device {doc['device']}{' (quick sizes)' if doc['quick'] else ''}",
        "",
        "| stage | status | seconds | key figures |",
        "|---|---|---:|---|",
    ]
    for st in doc["stages"]:
        note = doc["key_figures"].get(st["stage"]) or st.get("note", "")
        lines.append(f"| {st['stage']} | {st['status']} | {st['seconds']} | {note} |")
    lines += ["", "| target (issue 13) | measured | met? |", "|---|---|---|"]
    return lines + [f"| {a} | {b} | {c} |" for a, b, c in doc["targets"]]


def _details(doc: dict) -> list[str]:
    lines = []
    if doc.get("bench_report"):
        lines += ["", "## ssamba bench", "", doc["bench_report"].rstrip()]
    if doc.get("pretrain_table"):
        lines += ["", "## Pretraining throughput", "", doc["pretrain_table"].rstrip()]
    return lines


def markdown(doc: dict, overview_last: bool = False) -> str:
    """summary.md; ``overview_last`` puts the tables after the overview first (for a terminal
    that keeps only the end of the output)."""
    if overview_last:
        return "\n".join(_details(doc) + [""] + _overview(doc)) + "\n"
    return "\n".join(_overview(doc) + _details(doc)) + "\n"


def _key_figures(tests: str | None, scan: dict, bench: dict, pretrain: dict, env: dict) -> dict:
    figures = {"env": f"GPU {env.get('gpu') or 'none'}; scan {json.dumps(_selected(env))}"}
    if tests:
        figures["tests"] = tests
    if scan.get("found"):
        figures["scan"] = f"Triton fwd+bwd {scan['min']:.0%}-{scan['max']:.0%} of the ceiling"
    if scan.get("bandwidth_gb_s"):
        bw = f"copy bandwidth {scan['bandwidth_gb_s']:.0f} GB/s"
        figures["scan"] = f"{figures['scan']}; {bw}" if "scan" in figures else bw
    if bench.get("found"):
        figures["bench"] = f"scan backend {'/'.join(bench['scan_backend']) or '?'}"
        long = bench.get("long")
        if long and long["baseline_status"] == "ok":
            figures["bench"] += (
                f"; at {long['tokens']} tokens vs explicit: time "
                f"-{_f(long['time_reduction_pct'], '.0f')} %, memory "
                f"-{_f(long['memory_reduction_pct'], '.0f')} %"
            )
        elif long:
            failed = f"{long['baseline']} {long['baseline_status']} at {long['tokens']}"
            figures["bench"] += "; " + failed
    if pretrain.get("found"):
        cps = ", ".join(f"{k} {_f(v, '.1f')}" for k, v in pretrain["clips_per_s"].items())
        figures["pretrain"] = f"clips/s {cps}; ratio {_f(pretrain.get('ratio'))}"
    return figures


def _selected(env: dict):
    scan = env.get("scan") or {}
    return scan.get("selected") or scan.get("error")


def _pretrain_table(doc: dict | None) -> str:
    if not doc:
        return ""
    lines = ["| model | frames | precision | scan | s/step | clips/s | steps | status |",
             "|---|---:|---|---|---:|---:|---:|---|"]  # fmt: skip
    for p in doc.get("points", []):
        lines.append(
            f"| {p['model']} | {p['frames']} | {p['precision']} | {p.get('scan_backend') or ''} "
            f"| {_f(p.get('s_per_step'), '.3f')} | {_f(p.get('clips_per_s'), '.1f')} | "
            f"{len(p.get('times', []))} | {p.get('status', 'not run')} {p.get('error', '')} |"
        )
    return "\n".join(lines) + "\n"


def _bench_report(bench_dir: Path) -> str:
    """The Markdown of ``ssamba bench`` (needs the ssamba package; empty when it fails)."""
    try:
        from ssamba.bench.report import load_points, markdown_report

        return markdown_report(load_points(bench_dir))
    except Exception:  # noqa: BLE001 - the summary table still has the figures
        return ""


def _copy_results(work: Path, out: Path, scan_path: Path | None) -> None:
    pairs = [(work / "bench" / n, out / n) for n in ("bench.csv", "bench.json", "bench.png")]
    pairs.append((work / "pretrain.json", out / "pretrain.json"))
    if scan_path is not None:
        pairs.append((scan_path, out / "scan.csv"))  # a JSON table keeps its content as is
    for src, dst in pairs:
        if src.is_file():
            shutil.copyfile(src, dst)


def _write_log(work: Path, out: Path, stages: list[dict]) -> None:
    """One log file: the tail of every stage's output, in order."""
    parts = []
    for st in stages:
        log = work / f"{st['stage']}.log"
        text = log.read_text(errors="replace") if log.exists() else "(no output)\n"
        if len(text) > LOG_BYTES_PER_STAGE:
            text = "[... cut ...]\n" + text[-LOG_BYTES_PER_STAGE:]
        parts.append(f"===== {st['stage']}: {st['status']} ({st['seconds']} s)\n{text}\n")
    (out / "log.txt").write_text("".join(parts))


def summarize(work: Path, out: Path, device: str, quick: bool) -> dict:
    stages = read_status(work / "status.tsv")
    env = _read_json(work / "env.json") or {}
    scan_rows, scan_path = _scan_rows(work / "scan")
    bench_doc = _read_json(work / "bench" / "bench.json")
    pretrain_doc = _read_json(work / "pretrain.json")
    scan, bench = scan_figures(scan_rows), bench_figures(bench_doc)
    scan["bandwidth_gb_s"] = scan_bandwidth(work / "scan")
    pretrain = pretrain_figures(pretrain_doc)
    tests = tests_result(work / "tests.log")
    doc = {
        "device": device,
        "quick": quick,
        "env": env,
        "stages": stages,
        "tests": tests,
        "scan": scan,
        "bench": bench,
        "pretrain": pretrain,
        "targets": _quick(targets(scan, bench, pretrain), quick),
        "key_figures": _key_figures(tests, scan, bench, pretrain, env),
        "bench_report": _bench_report(work / "bench") if bench_doc else "",
        "pretrain_table": _pretrain_table(pretrain_doc),
    }
    out.mkdir(parents=True, exist_ok=True)
    _copy_results(work, out, scan_path)
    _write_log(work, out, stages)
    text = markdown(doc)
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("env", help="write the environment as JSON")
    e.add_argument("path")
    s = sub.add_parser("summary", help="summarise the stage outputs")
    s.add_argument("--work", required=True, type=Path)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--device", default="cuda")
    s.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.what == "env":
        return collect_env(args.path)
    doc = summarize(args.work, args.out, args.device, args.quick)
    print(markdown(doc, overview_last=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

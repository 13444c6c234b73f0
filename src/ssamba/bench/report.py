"""The sweep's results: files (CSV, JSON), the summary (ratios, break-even lengths, log-log
exponents) and the Markdown report. Standard library only."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ssamba.bench.spec import CSV_FIELDS, CSV_FILE, DEFAULT_FIT_MIN_TOKENS, FREQ_PATCHES, JSON_FILE
from ssamba.constants import PATCH
from ssamba.fileio import atomic_write_csv, atomic_write_json

# CSV columns read back as integers (the others as floats where they parse, else text).
_INT_FIELDS = frozenset(
    {
        "batch",
        "tokens",
        "frames",
        "repeats",
        "warmup",
        "threads",
        "numba_threads",
        "params",
        "depth",
    }
)


# ------------------------------------------------------------------------------ files
def write_results(
    points: list[dict],
    out_dir: str | os.PathLike,
    meta: dict | None = None,
    fit_min_tokens: int | None = DEFAULT_FIT_MIN_TOKENS,
) -> None:
    """Write ``bench.csv`` and ``bench.json`` (points, summary, machine, command) to ``out_dir``."""
    out_dir = Path(out_dir)

    rows = [[_csv_value(p.get(k)) for k in CSV_FIELDS] for p in points]
    atomic_write_csv(out_dir / CSV_FILE, CSV_FIELDS, rows)
    doc = dict(meta or {})
    doc["points"] = points
    doc["summary"] = summarize(points, fit_min_tokens=fit_min_tokens)
    atomic_write_json(out_dir / JSON_FILE, doc, default=str)


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
        path = path / JSON_FILE
    if path.suffix == ".json":
        return json.loads(path.read_text())["points"]
    with open(path, newline="") as f:
        return [{k: _parse_cell(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def load_meta(path: str | os.PathLike) -> dict:
    """The run's description in a ``bench.json`` (command, machine, settings); {} for a CSV."""
    path = Path(path)
    path = path / JSON_FILE if path.is_dir() else path
    if path.suffix != ".json":
        return {}
    meta = json.loads(path.read_text())
    meta.pop("points", None)
    meta.pop("summary", None)
    return meta


def _parse_cell(key: str, v: str):
    if v == "":
        return None
    if key in _INT_FIELDS:
        return int(float(v))
    try:
        return float(v)
    except ValueError:
        return v


# ------------------------------------------------------------------------------ summary
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


def _ok(p: dict) -> bool:
    return p.get("status") == "ok" and p.get("time_s") is not None


def _models(points: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(p["model"] for p in points))


def _reference_model(points: Sequence[dict]) -> str | None:
    """The first SSAMBA model: what the others are compared against."""
    return next(
        (
            p["model"]
            for p in points
            if p["model"].startswith("ssamba") or p.get("arch") == "ssamba"
        ),
        None,
    )


def _exponent(model: str, batch: int, ok: list[dict], fit_min_tokens: int | None) -> dict:
    fit = ok
    if fit_min_tokens:
        upper = [p for p in ok if int(p["tokens"]) >= fit_min_tokens]
        fit = upper if len(upper) >= 2 else ok
    xs = [int(p["tokens"]) for p in fit]
    return {
        "model": model,
        "batch": batch,
        "time": fit_exponent(xs, [p.get("time_s") for p in fit]),
        "peak_memory": fit_exponent(xs, [p.get("peak_mib") for p in fit]),
        "memory_increment": fit_exponent(xs, [p.get("increment_mib") for p in fit]),
        "fit_tokens": [xs[0], xs[-1]],
        "fit_points": len(xs),
    }


def _exponents(pts: list[dict], batches: list[int], fit_min_tokens: int | None) -> list[dict]:
    """Per model and batch: log-log slopes of time and memory vs tokens over the ok points."""
    out = []
    for m in _models(pts):
        for b in batches:
            ok = sorted(
                (p for p in pts if p["model"] == m and int(p["batch"]) == b and _ok(p)),
                key=lambda p: int(p["tokens"]),
            )
            if ok:
                out.append(_exponent(m, b, ok, fit_min_tokens))
    return out


def _compare_row(r: dict, s: dict, tokens: int) -> dict:
    """One length of reference ``r`` vs baseline ``s``: the ratios where both ran."""
    row = {"tokens": tokens, "baseline_status": s.get("status")}
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
            increment_reduction_pct=_pct_less(r.get("increment_mib"), s.get("increment_mib")),
        )
    return row


def _ratios(rows: list[dict], ref_key: str, base_key: str) -> list[float | None]:
    """reference / baseline per row; None where only the baseline failed."""
    out = []
    for row in rows:
        if row["baseline_status"] != "ok":
            out.append(None)
        elif row.get(ref_key) and row.get(base_key):
            out.append(row[ref_key] / row[base_key])
        else:
            out.append(1.0 if row.get(ref_key) == row.get(base_key) else None)
    return out


def _comparison(table: dict, reference: str, base: str, batch: int) -> dict | None:
    rows = []
    lengths = sorted({t for (m, b, t) in table if b == batch and m in (reference, base)})
    for t in lengths:
        r, s = table.get((reference, batch, t)), table.get((base, batch, t))
        if r is None or s is None or not _ok(r):
            continue  # compared only where the reference ran
        rows.append(_compare_row(r, s, t))
    if not rows:
        return None
    toks = [row["tokens"] for row in rows]
    return {
        "reference": reference,
        "baseline": base,
        "batch": batch,
        "rows": rows,
        "break_even_time": break_even(toks, _ratios(rows, "ref_time_s", "base_time_s")),
        "break_even_memory": break_even(toks, _ratios(rows, "ref_peak_mib", "base_peak_mib")),
    }


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
    reference = reference if reference is not None else _reference_model(pts)
    batches = sorted({int(p["batch"]) for p in pts})
    table = {(p["model"], int(p["batch"]), int(p["tokens"])): p for p in pts}
    exponents = _exponents(pts, batches, fit_min_tokens)
    comparisons = []
    if reference is not None:
        for base in (m for m in _models(pts) if m != reference):
            for b in batches:
                c = _comparison(table, reference, base, b)
                if c is not None:
                    comparisons.append(c)
    ref_exp = next((e for e in exponents if e["model"] == reference), None)
    return {
        "reference": reference,
        "comparisons": comparisons,
        "exponents": exponents,
        "ssamba_memory_exponent": ref_exp["memory_increment"] if ref_exp else None,
        "fit_min_tokens": fit_min_tokens,
    }


# ------------------------------------------------------------------------------ Markdown
def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None else format(v, spec)


def _cell_status(p: dict | None) -> str | None:
    if p is None:
        return "—"
    if p.get("status") != "ok":
        return {"oom": "OOM", "budget": "(budget)"}.get(p.get("status"), p.get("status"))
    return None


def _fmt_break_even(be: dict) -> str:
    if be.get("tokens") is None:
        return be.get("note", "—")
    return f"~{be['tokens']:.0f} tokens ({be.get('note', '')})"


def _header(pts: list[dict]) -> list[str]:
    """Device, mode and the scan backend each SSAMBA model ran with (as its workers reported)."""
    device = next((p.get("device") for p in pts if p.get("device")), None)
    mode = next((p.get("mode") for p in pts if p.get("mode")), None)
    scans = []
    for m in _models(pts):
        names = sorted(
            {str(p["scan_backend"]) for p in pts if p["model"] == m and p.get("scan_backend")}
        )
        if names:
            scans.append(f"{m} `{'/'.join(names)}`")
    parts = [f"device {device}" if device else "", f"mode {mode}" if mode else ""]
    parts.append(f"scan backend: {', '.join(scans)}" if scans else "")
    text = "; ".join(p for p in parts if p)
    return [text, ""] if text else []


def _length_table(pts: list[dict], models: list[str], batch: int) -> list[str]:
    """Time and memory per model at each length, for one batch size."""
    table = {(p["model"], int(p["batch"]), int(p["tokens"])): p for p in pts}
    lengths = sorted({int(p["tokens"]) for p in pts if int(p["batch"]) == batch})
    kind = next((p.get("memory_kind") for p in pts if p.get("memory_kind")), "rss")
    mem_name = "peak RSS" if kind == "rss" else "peak CUDA allocated"
    lines = [
        f"**Batch {batch}**: median time per batch (s) | {mem_name} in MiB (increment over the "
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
            p = table.get((m, batch, t))
            bad = _cell_status(p)
            if bad is not None:
                tcells.append(bad)
                mcells.append(bad)
            else:
                tcells.append(_fmt(p.get("time_s"), ".4g"))
                inc = _fmt(p.get("increment_mib"), ".0f")
                mcells.append(f"{_fmt(p.get('peak_mib'), '.0f')} (+{inc})")
        lines.append(f"| {t} | {t // FREQ_PATCHES * PATCH} | " + " | ".join(tcells + mcells) + " |")
    return lines + [""]


def _comparison_table(c: dict) -> list[str]:
    ref, base = c["reference"], c["baseline"]
    lines = [
        f"**{ref} vs {base}** (batch {c['batch']}): speed-up = {base} time / {ref} time; "
        f"reductions = 100 * (1 - {ref} / {base})",
        "",
        "| tokens | speed-up (x) | time reduction % | peak memory reduction % | "
        "increment reduction % |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in c["rows"]:
        if row["baseline_status"] != "ok":
            what = _cell_status({"status": row["baseline_status"]})
            lines.append(f"| {row['tokens']} | {base} {what} | | | |")
            continue
        lines.append(
            f"| {row['tokens']} | {_fmt(row.get('speedup'), '.2f')} | "
            f"{_fmt(row.get('time_reduction_pct'), '.1f')} | "
            f"{_fmt(row.get('memory_reduction_pct'), '.1f')} | "
            f"{_fmt(row.get('increment_reduction_pct'), '.1f')} |"
        )
    return lines + [
        "",
        f"Break-even (time): {_fmt_break_even(c['break_even_time'])}; "
        f"break-even (peak memory): {_fmt_break_even(c['break_even_memory'])}.",
        "",
    ]


def _exponent_table(summary: dict) -> list[str]:
    lines = [
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
    return lines + [""]


def markdown_report(points: Sequence[dict], summary: dict | None = None) -> str:
    """Markdown: the run's device and scan backend, time and memory per model and length, then
    SSAMBA vs each SSAST and the log-log exponents."""
    summary = summary if summary is not None else summarize(points)
    pts = [p for p in points if p.get("model")]
    models = _models(pts)
    lines = _header(pts)
    for b in sorted({int(p["batch"]) for p in pts}):
        lines += _length_table(pts, models, b)
    for c in summary.get("comparisons", []):
        lines += _comparison_table(c)
    if summary.get("exponents"):
        lines += _exponent_table(summary)
    if summary.get("ssamba_memory_exponent") is not None:
        lines.append(
            f"{summary['reference']} memory (increment over baseline) grows as tokens^"
            f"{summary['ssamba_memory_exponent']:.2f}."
        )
    return "\n".join(lines).rstrip() + "\n"

"""``ssamba bench``: the sweep's files, its failure paths, and the summary arithmetic.

The sweeps here are tiny (depth-2 models, 64-128 tokens, batch 1, one repeat) and assert on the
files' structure and the statuses, never on time values: the machine may be busy.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssamba.bench import (
    CSV_FIELDS,
    break_even,
    fit_exponent,
    frames_for_tokens,
    is_oom,
    load_points,
    markdown_report,
    parse_model,
    run_bench,
    summarize,
)
from ssamba.cli import bench as bench_cli
from ssamba.cli import main as cli_main
from ssamba.models.config import patch_grid


def main(argv):
    """``ssamba bench ARGV``: the exit status."""
    return cli_main(["bench", *argv])


# --------------------------------------------------------------------------------------------------
# Names and sizes


def test_frames_for_tokens_gives_that_many_patches():
    for tokens in (8, 64, 128, 22528, 32768):
        frames = frames_for_tokens(tokens)
        f_dim, t_dim = patch_grid(128, frames, 16, 16)
        assert f_dim * t_dim == tokens
    assert frames_for_tokens(128) == 256
    for bad in (0, 4, 100):
        with pytest.raises(ValueError, match="multiple of 8"):
            frames_for_tokens(bad)


def test_parse_model_names():
    assert parse_model("ssamba_tiny")["preset"] == "ssamba_tiny"
    s = parse_model("ssast_tiny_explicit")
    assert (s["name"], s["preset"], s["overrides"]) == (
        "ssast_tiny_explicit",
        "ssast_tiny",
        {"attention": "explicit"},
    )
    assert parse_model("ssast_small")["overrides"] == {"attention": "sdpa"}
    assert parse_model("ssast_explicit", size="base")["name"] == "ssast_base_explicit"
    assert parse_model("ssast_tiny_sdpa")["name"] == "ssast_tiny"
    for bad in ("vit_tiny", "ssamba_tiny_explicit", "ssast_huge", "ssast_tiny_x"):
        with pytest.raises(ValueError):
            parse_model(bad)
    with pytest.raises(ValueError, match="odd"):
        run_bench(["ssamba_tiny"], [64], 1, depth=3, out=None, log=None)


# --------------------------------------------------------------------------------------------------
# A real (tiny) sweep through the command line


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "--models",
        "ssamba_tiny,ssast_tiny",
        "--depth",
        "2",
        "--tokens",
        "64,128",
        "--batch",
        "1",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    return out, argv


def test_sweep_writes_csv_json_png(sweep, capsys):
    out, argv = sweep
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "device cpu; mode inference; scan backend: ssamba_tiny `" in printed
    assert "| tokens | frames | ssamba_tiny time | ssast_tiny time |" in printed
    assert "**ssamba_tiny vs ssast_tiny** (batch 1)" in printed
    assert "Break-even (time)" in printed

    with open(out / "bench.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_FIELDS
    assert [(r["model"], r["tokens"]) for r in rows] == [
        ("ssamba_tiny", "64"),
        ("ssast_tiny", "64"),
        ("ssamba_tiny", "128"),
        ("ssast_tiny", "128"),
    ]
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert r["frames"] == str(int(r["tokens"]) * 2)
        assert float(r["time_s"]) > 0
        assert float(r["peak_mib"]) >= float(r["baseline_mib"]) > 0
        assert float(r["increment_mib"]) == pytest.approx(
            float(r["peak_mib"]) - float(r["baseline_mib"]), abs=0.01
        )
        assert r["memory_kind"] == "rss" and r["mode"] == "inference" and r["depth"] == "2"
        assert r["threads"] == "1"
    assert rows[0]["scan_backend"] in ("cpu", "reference")
    assert rows[1]["scan_backend"] == ""

    doc = json.loads((out / "bench.json").read_text())
    assert {"command", "argv", "machine", "settings", "points", "summary"} <= set(doc)
    assert doc["command"]
    assert "--tokens 64,128 --batch 1" in doc["equivalent_command"]
    assert "--depth 2" in doc["equivalent_command"]
    assert {"cpu", "cores_available", "torch", "mem_total_gib"} <= set(doc["machine"])
    assert "reference" in doc["machine"]["scan_backends_available"]
    assert doc["settings"]["models"] == ["ssamba_tiny", "ssast_tiny"]
    assert len(doc["points"][0]["times"]) == 1
    summary = doc["summary"]
    assert summary["reference"] == "ssamba_tiny"
    (comp,) = summary["comparisons"]
    assert comp["baseline"] == "ssast_tiny" and [r["tokens"] for r in comp["rows"]] == [64, 128]
    assert {"speedup", "time_reduction_pct", "memory_reduction_pct"} <= set(comp["rows"][0])

    png = (out / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_from_results_rerenders(sweep, tmp_path, capsys):
    out, _ = sweep
    if not (out / "bench.json").exists():
        pytest.skip("the sweep test did not run")
    assert main(["--from", str(out), "--out", str(tmp_path), "--no-plot"]) == 0
    assert "ssamba_tiny vs ssast_tiny" in capsys.readouterr().out
    # Existing results are replaced only with --overwrite, also in place (read before written).
    assert main(["--from", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")  # --overwrite replaces bench's files only
    assert main(["--from", str(tmp_path), "-o", str(tmp_path), "--overwrite", "--no-plot"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"
    again = json.loads((tmp_path / "bench.json").read_text())
    assert again["points"] == json.loads((out / "bench.json").read_text())["points"]
    from_csv = load_points(out / "bench.csv")
    assert [(p["model"], p["tokens"], p["status"]) for p in from_csv] == [
        (p["model"], p["tokens"], p["status"]) for p in again["points"]
    ]


# --------------------------------------------------------------------------------------------------
# Failures: out of memory, timeout, budget


def test_oom_stops_that_models_sweep(tmp_path):
    # Explicit attention at 32768 tokens needs a (1, 3, N, N) float matrix (~12.9 GB): beyond a
    # 4 GiB address-space cap (and beyond what the allocator grants anyway), while 64 tokens fit.
    points = run_bench(
        ["ssast_tiny_explicit"],
        [64, 32768, 65536],
        1,
        depth=1,
        repeats=1,
        warmup=0,
        threads=1,
        max_memory_gb=4,
        out=tmp_path,
        make_plot=False,
        log=None,
    )
    assert [(p["tokens"], p["status"]) for p in points] == [(64, "ok"), (32768, "oom")]
    assert "allocate" in points[1]["error"].lower()
    rows = list(csv.DictReader(open(tmp_path / "bench.csv", newline="")))
    assert [r["status"] for r in rows] == ["ok", "oom"]
    summary = summarize(points)
    assert summary["reference"] is None and summary["comparisons"] == []


def test_timeout_and_budget_are_recorded_and_other_models_go_on(tmp_path):
    points = run_bench(
        ["ssamba_tiny", "ssast_tiny"],
        [64, 128],
        1,
        depth=2,
        repeats=1,
        timeout_per_point=0.2,
        out=tmp_path,
        log=None,
    )
    assert [(p["model"], p["tokens"], p["status"]) for p in points] == [
        ("ssamba_tiny", 64, "timeout"),
        ("ssast_tiny", 64, "timeout"),
    ]
    assert (tmp_path / "bench.png").exists()  # failed points are still drawn (as marks)
    points = run_bench(
        ["ssamba_tiny"], [64, 128], 1, depth=2, max_minutes=0.003, out=None, log=None
    )
    assert [(p["tokens"], p["status"]) for p in points] == [(64, "budget")]


def test_train_mode(tmp_path):
    (p,) = run_bench(["ssamba_tiny"], [64], 2, depth=2, repeats=1, mode="train", out=None, log=None)
    assert p["status"] == "ok", p.get("error")
    assert p["mode"] == "train" and p["time_s"] > 0 and p["increment_mib"] >= 0


# --------------------------------------------------------------------------------------------------
# The summary on synthetic points


def _synthetic(tokens, model, arch, time_fn, inc_fn, status=None):
    out = []
    for t in tokens:
        p = {"model": model, "arch": arch, "batch": 4, "tokens": t, "status": "ok"}
        if status and t in status:
            p["status"] = status[t]
        else:
            inc = inc_fn(t)
            p.update(time_s=time_fn(t), increment_mib=inc, baseline_mib=300.0, peak_mib=300 + inc)
        out.append(p)
    return out


def test_summarize_known_power_laws():
    tokens = [2**k for k in range(7, 14)]  # 128 .. 8192
    points = (
        _synthetic(tokens, "ssamba_tiny", "ssamba", lambda t: 0.01 * t, lambda t: 0.05 * t)
        + _synthetic(tokens, "ssast_tiny", "ssast", lambda t: 1e-5 * t**2, lambda t: 1e-4 * t**1.5)
        + _synthetic(
            tokens,
            "ssast_tiny_explicit",
            "ssast",
            lambda t: 2e-5 * t**2,
            lambda t: 1e-3 * t**2,
            status={8192: "oom"},
        )
    )
    s = summarize(points, fit_min_tokens=None)
    assert s["reference"] == "ssamba_tiny"
    assert s["ssamba_memory_exponent"] == pytest.approx(1.0, abs=1e-9)
    exps = {e["model"]: e for e in s["exponents"]}
    assert exps["ssamba_tiny"]["time"] == pytest.approx(1.0)
    assert exps["ssast_tiny"]["time"] == pytest.approx(2.0)
    assert exps["ssast_tiny"]["memory_increment"] == pytest.approx(1.5)
    assert exps["ssast_tiny_explicit"]["memory_increment"] == pytest.approx(2.0)
    assert exps["ssast_tiny_explicit"]["fit_tokens"] == [128, 4096]  # the oom point is left out

    comp = {c["baseline"]: c for c in s["comparisons"]}
    rows = {r["tokens"]: r for r in comp["ssast_tiny"]["rows"]}
    # time ratio ssamba / ssast = 0.01 t / 1e-5 t^2 = 1000 / t: speed-up t / 1000.
    assert rows[4096]["speedup"] == pytest.approx(4.096)
    assert rows[4096]["time_reduction_pct"] == pytest.approx(100 * (1 - 1000 / 4096))
    assert rows[128]["speedup"] == pytest.approx(0.128)
    inc_a, inc_b = 0.05 * 4096, 1e-4 * 4096**1.5
    assert rows[4096]["increment_reduction_pct"] == pytest.approx(100 * (1 - inc_a / inc_b))
    assert rows[4096]["memory_reduction_pct"] == pytest.approx(
        100 * (1 - (300 + inc_a) / (300 + inc_b))
    )
    # The ratio is an exact power law, so log-log interpolation finds the crossing exactly.
    assert comp["ssast_tiny"]["break_even_time"]["tokens"] == pytest.approx(1000.0)
    assert comp["ssast_tiny_explicit"]["break_even_time"]["tokens"] == pytest.approx(500.0)
    # Memory: 300 + 0.05 t vs 300 + 1e-4 t^1.5 cross at t = 250 000: not within the range.
    assert comp["ssast_tiny"]["break_even_memory"]["tokens"] is None
    assert "not reached" in comp["ssast_tiny"]["break_even_memory"]["note"]
    # 0.05 t = 1e-3 t^2 at t = 50: ssamba uses less memory at every measured length.
    assert comp["ssast_tiny_explicit"]["break_even_memory"]["tokens"] is None
    assert "below range" in comp["ssast_tiny_explicit"]["break_even_memory"]["note"]
    last = comp["ssast_tiny_explicit"]["rows"][-1]
    assert last["tokens"] == 8192 and last["baseline_status"] == "oom" and "speedup" not in last

    report = markdown_report(points, s)
    assert "| 8192 | ssast_tiny_explicit OOM | | | |" in report
    assert "~1000 tokens" in report and "tokens^1.00" in report


def test_fit_min_tokens_restricts_the_fit():
    tokens = [128, 256, 512, 1024, 2048, 4096]
    # Constant below 1024, linear above: the full fit is flatter than the upper one.
    pts = _synthetic(
        tokens, "ssamba_tiny", "ssamba", lambda t: 1.0, lambda t: 100.0 * max(t, 1024) / 1024
    )
    assert summarize(pts, fit_min_tokens=1024)["ssamba_memory_exponent"] == pytest.approx(1.0)
    assert summarize(pts, fit_min_tokens=None)["ssamba_memory_exponent"] < 0.9
    # Fewer than two points qualify: all points are used.
    assert summarize(pts, fit_min_tokens=4096)["exponents"][0]["fit_points"] == 6


def test_break_even_and_fit_edge_cases():
    assert break_even([128, 256], [0.5, 0.2])["tokens"] is None
    assert break_even([128, 256], [2.0, 1.5])["note"].startswith("not reached")
    assert break_even([128, 256, 512], [2.0, None, None]) == {
        "tokens": 256.0,
        "note": "at most (the baseline failed here)",
    }
    # Crossing at the geometric mean when the log-ratio is symmetric.
    assert break_even([100, 400], [2.0, 0.5])["tokens"] == pytest.approx(200.0)
    assert fit_exponent([1, 10, 100], [3, 30, 300]) == pytest.approx(1.0)
    assert fit_exponent([10], [1]) is None
    assert fit_exponent([10, 20], [0, 0]) is None
    assert math.isclose(fit_exponent([2, 4, 8], [4, 16, 64]), 2.0)


# --------------------------------------------------------------------------------------------------
# Command line


def test_register_and_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="ssamba")
    bench_cli.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "-o", "x", "--tokens", "128,256", "--mode", "train"])
    assert args.func is bench_cli.run and args.mode == "train" and args.out == "x"
    assert args.tokens == "128,256" and args.max_memory_gb is None
    args = parser.parse_args(["bench", "--device", "cuda", "--scan", "triton"])
    assert (args.device, args.scan) == ("cuda", "triton")
    assert main(["--tokens", "64"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["--out", "x", "--tokens", "100"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["--out", "x", "--models", "vit_tiny"]) == 2
    assert "unknown model" in capsys.readouterr().err
    (tmp_path / "bench.csv").write_text("model\n")
    assert main(["-o", str(tmp_path), "--tokens", "64", "--depth", "2"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "bench.csv").read_text() == "model\n"  # refused: left as it was
    assert main(["-o", "x", "--repeats", "0"]) == 2  # one line, no usage dump
    assert "must be >= 1" in capsys.readouterr().err


def test_help_loads_no_torch():
    code = (
        "import argparse, contextlib, io, sys\n"
        "from ssamba.cli import bench\n"
        "p = argparse.ArgumentParser(prog='ssamba')\n"
        "bench.register(p.add_subparsers())\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "    p.parse_args(['bench', '--help'])\n"
        "assert '(default: 4)' in out.getvalue()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_out_of_memory_is_oom():
    assert is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 12 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_oom(RuntimeError("could not create a primitive"))
    assert is_oom(RuntimeError("could not create a primitive"), capped=True)
    assert not is_oom(ValueError("bad shape"))


def test_markdown_header_names_the_scan_backend():
    points = [
        {"model": "ssamba_tiny", "arch": "ssamba", "batch": 1, "tokens": 64, "status": "ok",
         "time_s": 0.1, "peak_mib": 10.0, "increment_mib": 1.0, "device": "cuda",
         "mode": "inference", "scan_backend": "triton", "memory_kind": "cuda_allocated"},
    ]  # fmt: skip
    report = markdown_report(points)
    assert report.startswith("device cuda; mode inference; scan backend: ssamba_tiny `triton`")
    assert "peak CUDA allocated" in report


# --------------------------------------------------------------------------------------------------
# benchmarks/gpu_check.sh and its summary (the GPU run itself needs a GPU; its plumbing does not)

REPO = Path(__file__).resolve().parents[1]


def _gpu_summary():
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "benchmarks/gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_work(tmp_path: Path) -> Path:
    """Stage outputs as gpu_check.sh leaves them, with figures that meet every target."""
    work = tmp_path / "work"
    (work / "scan").mkdir(parents=True)
    (work / "status.tsv").write_text(
        "env\tok\t5\t0\t\ntests\tok\t40\t0\t\nscan\tok\t90\t0\t\nbench\tok\t120\t0\t\n"
        "pretrain\ttimeout (90s)\t90\t124\t\n"
    )
    (work / "env.json").write_text(json.dumps({"gpu": "NVIDIA H200", "torch": "2.11.0"}))
    (work / "tests.log").write_text("....\n12 passed, 2 skipped in 3.10s\n")
    (work / "scan" / "scan.csv").write_text(
        "backend,pass,L,D,gupdates_s,ceiling_fraction\n"
        "triton,fwd,4096,768,300,0.7\n"
        "triton,fwd+bwd,512,768,100,0.2\n"
        "triton,fwd+bwd,2048,768,200,0.45\n"
        "triton,fwd+bwd,16384,768,250,0.6\n"
        "torch,fwd+bwd,2048,768,20,0.05\n"
    )
    lengths = [4096, 8192, 22528]
    points = _synthetic(lengths, "ssamba_tiny", "ssamba", lambda t: 1e-3 * t, lambda t: 1.0)
    points += _synthetic(lengths, "ssast_tiny", "ssast", lambda t: 1e-6 * t**2, lambda t: 2.0)
    points += _synthetic(
        lengths, "ssast_tiny_explicit", "ssast", lambda t: 1e-5 * t**2, lambda t: 1e4
    )
    for p in points:
        p["scan_backend"] = "triton" if p["arch"] == "ssamba" else ""
    from ssamba.bench import write_results

    write_results(points, work / "bench", {"command": "test"})
    (work / "bench" / "bench.png").write_bytes(b"png")
    (work / "pretrain.json").write_text(
        json.dumps(
            {
                "points": [
                    {"model": "ssamba_tiny", "frames": 1024, "precision": "bf16",
                     "clips_per_s": 300.0, "status": "ok", "times": [0.2]},
                    {"model": "ssast_tiny", "frames": 1024, "precision": "bf16",
                     "clips_per_s": 500.0, "status": "ok", "times": [0.1]},
                ],
                "ratios": [{"model": "ssamba_tiny", "baseline": "ssast_tiny", "frames": 1024,
                            "precision": "bf16", "clips_per_s_ratio": 0.6}],
            }
        )
    )  # fmt: skip
    return work


def test_gpu_summary_reads_the_targets(tmp_path):
    gs = _gpu_summary()
    out = tmp_path / "out"
    doc = gs.summarize(_gpu_work(tmp_path), out, "cuda", quick=False)
    assert doc["scan"]["found"] and doc["scan"]["min"] == pytest.approx(0.45)
    assert doc["scan"]["rows"] == 2 and doc["scan"]["met"]
    long = doc["bench"]["long"]
    assert long["tokens"] == 22528 and long["time_met"] and long["memory_met"]
    assert doc["bench"]["sdpa_from_4k_met"] and doc["bench"]["scan_backend"] == ["triton"]
    assert doc["pretrain"]["ratio"] == pytest.approx(0.6) and doc["pretrain"]["met"]
    assert [met for _, _, met in doc["targets"]] == ["yes"] * 5
    assert doc["tests"] == "12 passed, 2 skipped in 3.10s"
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    assert files == sorted(gs.OUT_FILES)
    text = (out / "summary.md").read_text()
    assert "GPU: NVIDIA H200; torch 2.11.0" in text and "| pretrain | timeout (90s) |" in text
    assert "scan backend: ssamba_tiny `triton`" in text  # the bench report, with its header


def test_gpu_summary_without_results(tmp_path):
    gs = _gpu_summary()
    work = tmp_path / "work"
    work.mkdir()
    (work / "status.tsv").write_text("scan\tmissing: benchmarks/bench_scan_gpu.py\t0\t\t\n")
    doc = gs.summarize(work, tmp_path / "out", "cuda", quick=False)
    assert [met for _, _, met in doc["targets"]] == ["n/a"] * 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "log.txt",
        "summary.json",
        "summary.md",
    ]
    assert gs.scan_figures([{"impl": "triton", "direction": "bwd", "seqlen": "4096",
                             "pct_of_ceiling": "55"}])["min"] == pytest.approx(0.55)  # fmt: skip


def test_gpu_check_script_parses():
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        subprocess.run(["bash", "-n", str(REPO / "benchmarks" / script)], check=True)

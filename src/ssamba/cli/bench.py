"""``ssamba bench``: time and peak memory of SSAMBA vs SSAST as the input gets longer."""

from __future__ import annotations

import argparse
import signal
import threading

# ssamba.bench.spec imports no torch (nor does the bench package's lazy __init__).
from ssamba.bench.spec import (
    DEFAULT_FIT_MIN_TOKENS,
    DEFAULT_TOKENS,
    DEVICES,
    MODES,
    PLOT_FILE,
    RESULT_FILES,
    SCAN_BACKENDS,
)
from ssamba.cli.common import (
    add_command,
    add_out,
    add_progress,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    prepare_output,
)
from ssamba.errors import UsageError
from ssamba.models.config import SIZES

DESCRIPTION = """\
Sweep the input length (stride-16 patch tokens) and batch size for each model, one fresh process
per point, and record the median time and peak memory of a fine-tuning forward pass (or a
training step) on the CPU or a CUDA device. Writes bench.csv, bench.json and bench.png to --out
and prints Markdown tables: SSAMBA vs each SSAST per length, the break-even length and the
log-log exponents. Each SSAMBA point records the scan backend that ran.

examples:
  ssamba bench --tokens 128,512,2048,8192 --repeats 2 -o results/bench
  ssamba bench --device cuda --tokens 512,2048,4096,8192,22528,32768 -o results/bench-gpu
  ssamba bench --from results/bench          # re-print the tables of an earlier run"""


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "bench",
        help="time and peak memory of SSAMBA vs SSAST as the input gets longer",
        description=DESCRIPTION,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_out(
        p,
        required=False,
        help="folder for bench.csv, bench.json and bench.png (needed to measure; with --from, "
        "default: print only); other files in it are left alone",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's bench.csv, bench.json and bench.png (refused otherwise)",
    )
    add_progress(p)
    _add_sweep_arguments(p)
    _add_limit_arguments(p)
    p.add_argument(
        "--fit-min-tokens",
        type=non_negative_int,
        default=DEFAULT_FIT_MIN_TOKENS,
        metavar="N",
        help="fit the log-log exponents over points with at least N tokens",
    )
    p.add_argument(
        "--from",
        dest="from_results",
        metavar="PATH",
        help="do not measure: re-summarise (and with --out re-plot) an earlier bench.json or "
        "bench.csv (default: measure)",
    )
    p.add_argument("--no-plot", action="store_true", help="do not write bench.png")


def _add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    """What is measured: models, lengths, batch sizes, mode, device."""
    p.add_argument(
        "--models",
        metavar="LIST",
        help="comma-separated: ssamba_<size>, ssast_<size> (torch's scaled_dot_product_attention: "
        "flash/memory-efficient kernels on CUDA), ssast_<size>_explicit (the reference's "
        "explicit N x N attention); default: all three of --size",
    )
    p.add_argument("--size", choices=tuple(SIZES), default="tiny", help="size of those models")
    p.add_argument(
        "--tokens",
        default=",".join(map(str, DEFAULT_TOKENS)),
        metavar="LIST",
        help="patch-token counts, multiples of 8 (frames = tokens / 8 * 16)",
    )
    p.add_argument("--batch", default="4", metavar="LIST", help="batch size(s), comma-separated")
    p.add_argument(
        "--repeats", type=positive_int, default=3, metavar="N", help="timed runs per point (median)"
    )
    p.add_argument(
        "--warmup", type=non_negative_int, default=1, metavar="N", help="untimed runs before them"
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="inference",
        help="inference: eval, no gradients (the paper's measurement); train: forward + backward",
    )
    p.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cuda: peak memory is torch.cuda.max_memory_allocated, timing synchronised",
    )
    p.add_argument(
        "--scan",
        choices=SCAN_BACKENDS,
        help="force the SSAMBA scan backend, as SSAMBA_SCAN does (default: the fastest one that "
        "runs on the device)",
    )
    p.add_argument(
        "--depth",
        type=positive_int,
        metavar="N",
        help="override every model's depth, for tests (default: the preset's)",
    )


def _add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """How long and how big: time limits, threads, the memory cap."""
    p.add_argument(
        "--timeout-per-point",
        type=non_negative_float,
        default=600.0,
        metavar="S",
        help="kill a point's worker after S seconds, status 'timeout' (0: no limit)",
    )
    p.add_argument(
        "--max-minutes",
        type=positive_float,
        metavar="MIN",
        help="bound the whole run: points not finished in MIN minutes get status 'budget' "
        "(default: no limit)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="torch threads in each worker (default: all available cores; numba follows)",
    )
    p.add_argument(
        "--max-memory-gb",
        type=non_negative_float,
        metavar="G",
        help="address-space cap (RLIMIT_AS) per worker, set after model creation; a point "
        "that needs more is 'oom' (default: 75%% of physical memory on the CPU, none on CUDA; "
        "0: no cap)",
    )


# ------------------------------------------------------------------------------ running
def run(args: argparse.Namespace) -> int:
    """``ssamba bench``: the sweep (or ``--from``), its files and the printed report."""
    previous = _terminate_as_interrupt()
    try:
        return _rerender(args) if args.from_results else _measure(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _measure(args: argparse.Namespace) -> int:
    if not args.out:
        raise UsageError("--out DIR is required (where bench.csv, bench.json and bench.png go)")
    from ssamba.bench import markdown_report, run_bench, summarize

    out = prepare_output(args.out, args.overwrite, "bench results", RESULT_FILES)
    max_memory = "auto" if args.max_memory_gb is None else (args.max_memory_gb or None)
    try:
        points = run_bench(
            args.models,
            args.tokens,
            args.batch,
            size=args.size,
            repeats=args.repeats,
            warmup=args.warmup,
            mode=args.mode,
            timeout_per_point=args.timeout_per_point or None,
            max_minutes=args.max_minutes,
            threads=args.threads,
            device=args.device,
            max_memory_gb=max_memory,
            depth=args.depth,
            scan=args.scan,
            out=out,
            fit_min_tokens=args.fit_min_tokens,
            make_plot=not args.no_plot,
            log=None if args.no_progress else print,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    print()
    print(markdown_report(points, summarize(points, fit_min_tokens=args.fit_min_tokens)))
    print(f"wrote {out / 'bench.csv'}, bench.json" + ("" if args.no_plot else ", bench.png"))
    return 0


def _rerender(args: argparse.Namespace) -> int:
    """``--from``: the tables of an earlier run, and with ``--out`` its files again."""
    from ssamba.bench import load_meta, load_points, markdown_report, plot, summarize, write_results

    try:
        points = load_points(args.from_results)
        meta = load_meta(args.from_results)
    except (KeyError, ValueError) as e:
        raise UsageError(f"cannot read {args.from_results}: {e}") from None
    summary = summarize(points, fit_min_tokens=args.fit_min_tokens)
    if args.out:  # everything is in memory now, so --out may name the folder it came from
        out = prepare_output(args.out, args.overwrite, "bench results", RESULT_FILES)
        write_results(points, out, meta, args.fit_min_tokens)
        if not args.no_plot:
            plot(points, out / PLOT_FILE)
    print(markdown_report(points, summary))
    return 0


def _terminate_as_interrupt():
    """SIGTERM (``timeout``, a job scheduler) ends the sweep like Ctrl-C: the results so far are
    written, the plot drawn and the running worker killed. Returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None  # signal handlers can only be set from the main thread
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt

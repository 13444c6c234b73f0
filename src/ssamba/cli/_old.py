"""The ``ssamba`` command line.

Argument parsing only: each sub-command is registered by an ``add_<name>_parser(subparsers)``
function listed in :data:`SUBCOMMANDS`. It adds its parser and sets ``func`` to a
``run_<name>(args) -> int`` function that imports what it needs (keep heavy imports inside, so
``ssamba --help`` stays fast) and returns the exit status. To add a command, write the two
functions and append the first to ``SUBCOMMANDS``.

Exit status: 0 success, 1 the command ran and found problems (e.g. ``check-data``), 2 bad input
(missing or malformed manifest, unreadable audio under ``--on-bad-file error``, bad arguments):
printed as one ``error: ...`` line, without a traceback.
"""

from __future__ import annotations

import argparse
import json

PROG = "ssamba"


from ssamba.errors import UsageError as CommandError  # noqa: E402  (temporary)


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("ssamba")
    except PackageNotFoundError:
        import ssamba

        return getattr(ssamba, "__version__", "unknown (not installed)")


class _VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked (keeps start-up fast)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        kwargs.update(nargs=0, default=argparse.SUPPRESS, help="show the version and exit")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")
        parser.exit()


# --------------------------------------------------------------------------------------------------
# ssamba stats


def add_stats_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "stats",
        help="compute the fbank mean/std of a dataset (for --normalize)",
        description=(
            "Compute the mean and standard deviation of the unnormalised log-mel fbank over all "
            "values of a dataset (exact, streaming). The JSON it writes can be passed wherever "
            "a normalisation is expected (e.g. --normalize stats.json)."
        ),
    )
    p.add_argument("manifest", help="SSAST JSON, CSV, list of paths, or a folder of audio")
    p.add_argument("--out", "-o", metavar="JSON", help="write the stats to this JSON file")
    p.add_argument(
        "--target-length",
        type=int,
        metavar="N",
        help="pad/cut every fbank to N frames first, as training does (default: no padding)",
    )
    p.add_argument(
        "--on-bad-file",
        choices=("error", "skip"),
        default="error",
        help="stop at an unreadable file (default) or leave it out and count it",
    )
    _add_common_options(p)
    p.set_defaults(func=run_stats)


def _add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-rate", type=int, default=16000, help="decode at this rate (16000)")
    p.add_argument(
        "--workers", type=int, default=0, metavar="N", help="decode in N processes (default 0)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_stats(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ssamba.audio import AudioError
    from ssamba.data import compute_stats, read_manifest

    manifest = read_manifest(args.manifest, ignore_labels=True)
    try:
        stats = compute_stats(
            manifest,
            target_length=args.target_length,
            progress=not args.no_progress,
            on_bad_file=args.on_bad_file,
            sample_rate=args.sample_rate,
            num_workers=args.workers,
        )
    except AudioError as e:
        raise CommandError(
            f"{e} (`ssamba check-data` lists every bad file; --on-bad-file skip leaves them out)"
        ) from None
    out = {
        "mean": stats["mean"],
        "std": stats["std"],
        "files": stats["files"],
        "frames": stats["frames"],
        "skipped": stats["skipped"],
        "target_length": args.target_length,
        "manifest": str(Path(args.manifest).resolve()),
    }
    print(f"mean: {stats['mean']:.7f}")
    print(f"std:  {stats['std']:.7f}")
    print(f"({stats['files']} files, {stats['frames']} frames", end="")
    print(f", {stats['skipped']} skipped)" if stats["skipped"] else ")")
    if args.out:
        path = Path(args.out)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------------------------------
# ssamba check-data


def add_check_data_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "check-data",
        help="decode every file of a manifest and report problems",
        description=(
            "Check every entry of a manifest: the file exists and decodes, is not empty, has no "
            "NaN/inf, is long enough, and its labels are known. Files that will be resampled are "
            "listed (not a problem). Exits 1 when problems are found, 0 otherwise."
        ),
    )
    p.add_argument("manifest", help="SSAST JSON, CSV, list of paths, or a folder of audio")
    p.add_argument(
        "--min-seconds",
        type=float,
        metavar="S",
        help="files shorter than S seconds are problems (default: shorter than one 25 ms frame)",
    )
    p.add_argument(
        "--classes",
        metavar="CSV",
        help="class_labels_indices.csv to check the labels against",
    )
    p.add_argument("--json", metavar="REPORT", help="also write the report as JSON")
    _add_common_options(p)
    p.set_defaults(func=run_check_data)


def run_check_data(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ssamba.data import check_data, read_manifest

    manifest = read_manifest(args.manifest, classes=args.classes)
    report = check_data(
        manifest,
        sample_rate=args.sample_rate,
        min_seconds=args.min_seconds,
        progress=not args.no_progress,
        num_workers=args.workers,
    )
    print(report.summary())
    if args.json:
        path = Path(args.json)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1

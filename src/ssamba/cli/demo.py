"""``ssamba demo``: the whole pipeline end to end on built-in real audio, SSAMBA versus SSAST.

The work is :func:`ssamba.demo.pipeline.run_demo` (imported when the command runs, so ``--help``
loads no torch); this module parses the options, checks the output folder and prints the table.
"""

from __future__ import annotations

import argparse

from ssamba.cli.common import add_command, add_out, add_progress, check_cache_folder, positive_float


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "demo",
        help="the whole pipeline end to end on built-in real audio (SSAMBA vs SSAST)",
        description=(
            "Build the demo data (cached), pretrain SSAMBA and SSAST of the same small size on "
            "the same audio for the same time, then compare them (and SSAMBA from random "
            "initialisation, and a log-mel baseline) by fine-tuning (LP-FT: each run starts "
            "from the linear probe of its final output, which is reported beside it) on "
            "held-out voices and instruments. Writes results.md, results.json, plots and a "
            "README to the output folder; a re-run reuses the data and pretrained models whose "
            "settings match."
        ),
    )
    add_out(p, required=False, default="demo_out", help="output folder (data cached inside)")
    p.add_argument(
        "--budget",
        type=positive_float,
        default=1.0,
        metavar="X",
        help="scale times and sizes (1: about 12 minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the output folder and start from scratch (a folder that is not an earlier "
        "demo is refused otherwise)",
    )
    p.add_argument(
        "--fold-probes",
        action="store_true",
        help="also probe every layer and the final output separately, the instruments over "
        "program folds (the earlier demos' probe; 3-4 minutes more)",
    )
    add_progress(p)
    p.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from ssamba.demo.pipeline import run_demo
    from ssamba.demo.report import report_text
    from ssamba.training import configure_logging

    # an earlier demo's folder holds data/ (built first): it is resumed, not replaced
    check_cache_folder(args.out, args.overwrite, "data", "folder (not a demo output)")
    configure_logging(True)
    report = run_demo(
        args.out, args.budget, progress=not args.no_progress, fold_probes=args.fold_probes
    )
    print(report_text(report))
    print(f"\nwritten to {args.out}/ (results.md, results.json, plots, README.md)")
    return 0

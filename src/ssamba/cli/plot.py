"""``ssamba plot``: a run's training curves as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssamba.cli.common import add_command, add_overwrite, prepare_output
from ssamba.errors import UsageError


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "plot",
        help="plot a run's loss and accuracy curves to a PNG",
        description=(
            "Draw a run's metrics.jsonl as curves, training and validation, one panel per "
            "logged quantity (loss, InfoNCE, MSE, accuracy, mAP). Needs matplotlib "
            "(pip install 'ssamba[plot]')."
        ),
    )
    p.add_argument("run", metavar="RUN", help="a run folder (or its metrics.jsonl)")
    p.add_argument(
        "-o",
        "--out",
        metavar="PNG",
        help="image to write; its suffix gives the format (default: curves.png beside the metrics)",
    )
    add_overwrite(p)
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from ssamba.plots import CURVES_FILE, metrics_file, plot_metrics

    metrics = metrics_file(args.run)
    out = Path(args.out) if args.out else metrics.with_name(CURVES_FILE)
    prepare_output(out, args.overwrite, "plot")
    try:
        print(plot_metrics(metrics, out))
    except ImportError as err:  # matplotlib is optional
        raise UsageError(str(err)) from None
    return 0

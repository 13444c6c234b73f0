"""Training curves from a run's metrics.jsonl (``ssamba plot``); matplotlib is optional."""

from __future__ import annotations

from pathlib import Path

PANELS = (("loss", "loss"), ("nce", "InfoNCE"), ("mse", "MSE"), ("acc", "accuracy"), ("map", "mAP"))


def plot_metrics(metrics: str | Path, out: str | Path | None = None) -> Path:
    """One panel per logged quantity (train and validation curves); returns the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'ssamba[plot]'") from None
    from ssamba.training import METRICS, read_metrics

    path = Path(metrics)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (expected a run folder or metrics.jsonl)")
    records = read_metrics(path)
    panels = [(k, t) for k, t in PANELS if any(k in r for r in records)]
    if not panels:
        raise ValueError(f"{path}: no loss or accuracy values to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for kind, style in (("train", "-"), ("valid", "o-")):
            pts = [(r["step"], r[key]) for r in records if r.get("kind") == kind and key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=kind, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(out) if out else path.with_name("curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def add_plot_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot a run's loss and accuracy curves to a PNG")
    p.add_argument("run", help="a run folder (or its metrics.jsonl)")
    p.add_argument("--out", "-o", help="PNG path (default: curves.png beside the metrics)")
    p.set_defaults(func=run_plot)


def run_plot(args) -> int:
    print(plot_metrics(args.run, args.out))
    return 0

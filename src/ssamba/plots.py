"""Training curves from a run's metrics.jsonl (``ssamba plot``); matplotlib is optional."""

from __future__ import annotations

import os
from pathlib import Path

from ssamba.errors import UsageError
from ssamba.fileio import atomic_write
from ssamba.training import METRICS, read_metrics

__all__ = ["CURVES_FILE", "PANELS", "metrics_file", "plot_metrics"]

PANELS = (
    ("loss", "loss"),
    ("nce", "InfoNCE"),
    ("mse", "MSE"),
    ("acc", "accuracy"),
    ("map", "mAP"),
    ("frame_loss", "frame loss (teacher)"),  # pretrain --objective teacher
    ("utterance_loss", "utterance loss (teacher)"),
)
CURVES_FILE = "curves.png"  # written beside the metrics unless another path is given


def metrics_file(run: str | os.PathLike) -> Path:
    """The metrics.jsonl of a run folder (or the file itself); FileNotFoundError if missing."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file (expected a run folder or metrics.jsonl)")
    return path


def plot_metrics(metrics: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """One panel per logged quantity (train and validation curves); returns the PNG path
    (default: ``curves.png`` beside the metrics). Raises ImportError without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'ssamba[plot]'") from None
    path = metrics_file(metrics)
    records = read_metrics(path)
    panels = [(k, t) for k, t in PANELS if any(k in r for r in records)]
    if not panels:
        raise UsageError(f"{path}: no loss or accuracy values to plot")
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
    out = Path(out) if out else path.with_name(CURVES_FILE)
    kind = out.suffix.lstrip(".").lower() or "png"  # the temporary file's suffix says nothing
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110, format=kind))
    plt.close(fig)
    return out

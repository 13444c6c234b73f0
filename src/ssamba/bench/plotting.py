"""``bench.png``: time and peak memory vs tokens, log-log, one line per model (and batch)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ssamba.fileio import atomic_write

_STYLES = ("-", "--", ":", "-.")


def _series(pts: list[dict], model: str, batch: int) -> list[dict]:
    return sorted(
        (p for p in pts if p["model"] == model and int(p["batch"]) == batch),
        key=lambda p: int(p["tokens"]),
    )


def _mark_failures(ax, series: list[dict], color, row: int) -> None:
    """A cross at the top of the panel for each failed point, labelled with its status."""
    from matplotlib.transforms import blended_transform_factory

    trans = blended_transform_factory(ax.transData, ax.transAxes)
    for p in series:
        if p.get("status") in ("ok", "budget"):
            continue
        x = int(p["tokens"])
        ax.plot(x, 0.97, marker="x", ms=9, mew=2, color=color, transform=trans, clip_on=False)
        ax.annotate(
            p["status"].upper(),
            (x, 0.97),
            xycoords=trans,
            textcoords="offset points",
            xytext=(0, -14 - 9 * row),
            ha="center",
            fontsize=7,
            color=color,
        )


def _panel(ax, pts: list[dict], key: str, label: str, colors: list) -> None:
    from matplotlib.ticker import FuncFormatter

    models = list(dict.fromkeys(p["model"] for p in pts))
    batches = sorted({int(p["batch"]) for p in pts})
    any_line = False
    for i, m in enumerate(models):
        color = colors[i % len(colors)]
        for j, b in enumerate(batches):
            series = _series(pts, m, b)
            ok = [p for p in series if p.get("status") == "ok" and p.get("time_s") is not None]
            ok = [p for p in ok if p.get(key)]
            if ok:
                any_line = True
                name = m if len(batches) == 1 else f"{m} (B={b})"
                xs, ys = [int(p["tokens"]) for p in ok], [p[key] for p in ok]
                ax.plot(
                    xs, ys, _STYLES[j % len(_STYLES)], marker="o", ms=4, color=color, label=name
                )
            _mark_failures(ax, series, color, i)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    if any_line:
        ax.set_yscale("log")
    ax.set_xlabel("input tokens (stride-16 patches)")
    ax.set_ylabel(label)
    ax.grid(True, which="both", alpha=0.3)


def plot(points: Sequence[dict], path: str | os.PathLike) -> Path:
    """Two log-log panels, time and peak memory vs tokens, one line per model (and batch).

    A failed point is marked with a cross at the top of the panel, labelled with its status.
    Needs matplotlib (the ``plot`` extra): ImportError without it.
    """
    import matplotlib  # optional dependency

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    pts = [p for p in points if p.get("model")]
    batches = sorted({int(p["batch"]) for p in pts})
    kind = next((p.get("memory_kind") for p in pts if p.get("memory_kind")), "rss")
    memory = "peak memory (MiB, " + ("RSS" if kind == "rss" else "CUDA allocated") + ")"
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _panel(axes[0], pts, "time_s", "time per batch (s)", colors)
    _panel(axes[1], pts, "peak_mib", memory, colors)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="upper left")
    mode = next((p.get("mode") for p in pts), "inference")
    device = next((p.get("device") for p in pts), "cpu")
    fig.suptitle(f"{mode} on {device}" + (f", batch {batches[0]}" if len(batches) == 1 else ""))
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(path).suffix[1:] or "png"))
    plt.close(fig)
    return path

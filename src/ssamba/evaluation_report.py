"""What ``ssamba evaluate`` reports: :class:`EvalResult` (scores, metrics, per-class rows), its
readable summary and its files: ``metrics.json``, ``per_class.csv``, ``scores.npz`` and, for
single-label tasks, ``confusion.csv`` and ``confusion.png`` (matplotlib, optional).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssamba.fileio import atomic_write, atomic_write_csv, atomic_write_json
from ssamba.metrics import MetricWarning, confusion_matrix

__all__ = ["EvalResult", "plot_confusion"]


@dataclass
class EvalResult:
    """What :func:`evaluate_model` returns.

    ``scores`` (N, C) the head's scores (:func:`head_scores`); ``targets`` (N, C); ``metrics`` (see
    :func:`compute_metrics`, plus ``main_metric``); ``per_class`` rows (see
    :func:`per_class_metrics`); ``class_names`` the model's output classes; ``paths`` the files.
    """

    scores: np.ndarray
    targets: np.ndarray
    metrics: dict
    per_class: list[dict]
    class_names: list[str]
    multilabel: bool
    paths: list[str] = field(default_factory=list)
    display_names: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.scores, self.targets)

    def summary(self, max_rows: int = 60) -> str:
        """A readable report: the main metrics, then a per-class table (worst AP first)."""
        m = self.metrics
        lines = [
            f"examples: {m['num_examples']}; classes: {m['num_classes']} "
            f"({'multi-label' if self.multilabel else 'single-label'})"
        ]
        if m.get("acc") is not None:
            lines.append(f"accuracy: {m['acc']:.4f}")
        lines.append(f"mAP:      {m['map']:.4f} (over {m['map_classes']} classes with positives)")
        if m.get("mauc") is not None:
            lines.append(f"mean AUC: {m['mauc']:.4f}; d': {m['d_prime']:.4f}")
        for note in self.notes:
            lines.append(f"note: {note}")
        rows = sorted(
            self.per_class, key=lambda r: (math.isnan(r["ap"]), r["ap"] if r["support"] else 2)
        )
        shown = rows[:max_rows]
        width = min(32, max(5, *(len(self._label(r["name"])) for r in shown)))
        lines.append("")
        lines.append(
            f"{'class':<{width}}  {'support':>7}  {'precision':>9}  {'recall':>7}  "
            f"{'AP':>6}  {'AUC':>6}"
        )
        for r in shown:
            lines.append(
                f"{self._label(r['name'])[:width]:<{width}}  {r['support']:>7}  "
                f"{_fmt(r['precision']):>9}  {_fmt(r['recall']):>7}  {_fmt(r['ap']):>6}  "
                f"{_fmt(r['auc']):>6}"
            )
        if len(rows) > max_rows:
            lines.append(f"... {len(rows) - max_rows} more classes in per_class.csv")
        return "\n".join(lines)

    def _label(self, name: str) -> str:
        return self.display_names.get(name, name)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``metrics.json``, ``per_class.csv``, ``scores.npz`` and, single-label only,
        ``confusion.csv`` and ``confusion.png`` (skipped with a warning without matplotlib).
        Each file is replaced atomically; other files in ``folder`` are left alone."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "metrics.json", dict(self.metrics, notes=self.notes))
        header = ["index", "name", "display_name", "support", "predicted"] + _METRIC_COLS
        rows = [
            [r["index"], r["name"], self._label(r["name"]), r["support"], r["predicted"]]
            + [_fmt(r[k], 6) for k in _METRIC_COLS]
            for r in self.per_class
        ]
        atomic_write_csv(folder / "per_class.csv", header, rows)
        atomic_write(folder / "scores.npz", self._write_scores)
        if not self.multilabel:
            cm = self.confusion
            rows = [[name] + row.tolist() for name, row in zip(self.class_names, cm, strict=True)]
            header = ["true \\ predicted"] + self.class_names
            atomic_write_csv(folder / "confusion.csv", header, rows)
            try:
                plot_confusion(cm, [self._label(n) for n in self.class_names], folder)
            except ImportError as e:
                warnings.warn(str(e), MetricWarning, stacklevel=2)
        return folder

    def _write_scores(self, tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would append ".npz" to the name
            np.savez_compressed(
                f,
                scores=self.scores.astype(np.float32),
                targets=self.targets.astype(np.float32),
                paths=np.array(self.paths, dtype=str),
                classes=np.array(self.class_names, dtype=str),
            )


_METRIC_COLS = ["precision", "recall", "ap", "auc"]


def _fmt(x: float, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def plot_confusion(cm: np.ndarray, names: Sequence[str], folder: str | os.PathLike) -> Path:
    """Save ``confusion.png``: row-normalised confusion matrix (rows: true class)."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "confusion.png needs matplotlib: pip install matplotlib (or ssamba[plot]); "
            "confusion.csv has the same numbers"
        ) from None
    c = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    size = min(24.0, max(5.0, 0.28 * c + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    if c <= 60:
        ax.set_xticks(range(c), labels=list(names), rotation=90, fontsize=7)
        ax.set_yticks(range(c), labels=list(names), fontsize=7)
    if c <= 15:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"confusion (row-normalised), accuracy {acc:.4f}")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(folder) / "confusion.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path

"""Evaluation: classification metrics and ``evaluate_model`` (behind ``ssamba evaluate``).

Metrics take ``scores`` (N, C) (logits or probabilities: every metric here is invariant to a
monotonic per-value transform such as the sigmoid) and ``targets`` (N, C): one-hot, multi-hot or
soft (values in [0, 1], used as weights). They match scikit-learn on binary targets, ties included:

- :func:`accuracy`: argmax of the scores vs argmax of the targets;
- :func:`average_precision` / :func:`mean_average_precision`: per-class AP (step-wise, as
  ``sklearn.metrics.average_precision_score``) and its mean over the classes that have positives;
- :func:`roc_auc` / :func:`mean_auc`: per-class ROC AUC (ties count one half) and its mean over the
  classes that have both positives and negatives;
- :func:`d_prime`: ``sqrt(2) * Phi^-1(AUC)`` (the SSAST logs report it for the mean AUC);
- :func:`confusion_matrix` (rows: true class, columns: predicted) and :func:`per_class_metrics`.

A class without positives has no AP (and no AUC): it is left out of the means with a
:class:`MetricWarning` naming it, and the metrics dict says over how many classes each mean ran.

:func:`evaluate_model` runs a fine-tuned model over a manifest and returns an :class:`EvalResult`
(scores are the head's :func:`head_scores`: softmax for a model fine-tuned with cross-entropy,
sigmoid for one trained with binary cross-entropy, as the official checkpoints);
``EvalResult.save(folder)`` writes ``metrics.json``, ``per_class.csv``, ``scores.npz`` and, for
single-label tasks, ``confusion.csv`` and ``confusion.png`` (matplotlib, optional).
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssamba.constants import CLASSES_FILE
from ssamba.data import AudioDataset, Manifest, drop_bad, make_loader, read_manifest
from ssamba.errors import EvaluationError
from ssamba.fileio import atomic_write, atomic_write_bytes, atomic_write_json
from ssamba.models.model import AudioModel


class MetricWarning(UserWarning):
    """A metric was computed over fewer classes than the model has (the message says which)."""


# --------------------------------------------------------------------------------------------------
# Metrics


def _as_arrays(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _to_numpy(scores)
    t = _to_numpy(targets)
    if s.ndim == 1:
        s = s[:, None]
    if t.ndim == 1:
        t = t[:, None]
    if s.ndim != 2 or s.shape != t.shape:
        raise ValueError(
            f"scores and targets must both be (N, C) with the same shape, got "
            f"{tuple(s.shape)} and {tuple(t.shape)}"
        )
    if s.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    if not np.isfinite(t).all() or (t < 0).any() or (t > 1).any():
        raise ValueError("targets must be finite values in [0, 1] (one-hot, multi-hot or soft)")
    return s.astype(np.float64), t.astype(np.float64)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy()
    return np.asarray(x)


def _class_curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (weighted) true and false positives at each distinct score, highest first."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = np.cumsum(1.0 - y)[last_of_tie]
    return tps, fps


def _class_ap(s: np.ndarray, y: np.ndarray) -> float:
    tps, fps = _class_curve(s, y)
    if tps[-1] <= 0:
        return math.nan
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).tiny)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _class_auc(s: np.ndarray, y: np.ndarray) -> float:
    tps, fps = _class_curve(s, y)
    if tps[-1] <= 0 or fps[-1] <= 0:
        return math.nan
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision(scores: Any, targets: Any) -> np.ndarray:
    """Per-class average precision, shape (C,); NaN for a class with no positives."""
    s, t = _as_arrays(scores, targets)
    return np.array([_class_ap(s[:, c], t[:, c]) for c in range(s.shape[1])])


def roc_auc(scores: Any, targets: Any) -> np.ndarray:
    """Per-class ROC AUC, shape (C,); NaN for a class without positives or without negatives."""
    s, t = _as_arrays(scores, targets)
    return np.array([_class_auc(s[:, c], t[:, c]) for c in range(s.shape[1])])


def _mean_over_defined(
    values: np.ndarray, what: str, class_names: Sequence[str] | None, reason: str, warn: bool
) -> float:
    defined = ~np.isnan(values)
    if not defined.any():
        raise EvaluationError(f"{what} is undefined: no class has {reason}")
    if warn and not defined.all():
        names = _names(class_names, len(values))
        missing = [names[c] for c in np.flatnonzero(~defined)]
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        warnings.warn(
            f"{what} is the mean over the {int(defined.sum())} of {len(values)} classes that have "
            f"{reason}; left out: {shown}",
            MetricWarning,
            stacklevel=3,
        )
    return float(values[defined].mean())


def mean_average_precision(
    scores: Any, targets: Any, class_names: Sequence[str] | None = None, *, warn: bool = True
) -> float:
    """Mean over classes of the average precision. Classes without positives are left out, with a
    :class:`MetricWarning` naming them (never counted as 0 or 1)."""
    return _mean_over_defined(
        average_precision(scores, targets), "mAP", class_names, "positive examples", warn
    )


def mean_auc(
    scores: Any, targets: Any, class_names: Sequence[str] | None = None, *, warn: bool = True
) -> float:
    """Mean over classes of the ROC AUC. Classes without both positives and negatives are left
    out, with a :class:`MetricWarning`."""
    return _mean_over_defined(
        roc_auc(scores, targets), "mean AUC", class_names, "positive and negative examples", warn
    )


def d_prime(auc: float | np.ndarray) -> float | np.ndarray:
    """Sensitivity index ``sqrt(2) * Phi^-1(auc)`` (inf at AUC 1, -inf at 0)."""
    value = torch.special.ndtri(torch.as_tensor(auc, dtype=torch.float64)) * math.sqrt(2.0)
    return float(value) if value.dim() == 0 else value.numpy()


def accuracy(scores: Any, targets: Any) -> float:
    """Fraction of examples whose highest score is at the target's highest value."""
    s, t = _as_arrays(scores, targets)
    return float(np.mean(s.argmax(axis=1) == t.argmax(axis=1)))


def confusion_matrix(scores: Any, targets: Any) -> np.ndarray:
    """(C, C) counts: row = true class (argmax of the target), column = predicted (argmax)."""
    s, t = _as_arrays(scores, targets)
    c = s.shape[1]
    flat = t.argmax(axis=1) * c + s.argmax(axis=1)
    return np.bincount(flat, minlength=c * c).reshape(c, c)


def is_multilabel(targets: Any) -> bool:
    """True when some example has more than one positive (hard) label."""
    t = _to_numpy(targets)
    return bool(((t >= 0.5).sum(axis=1) > 1).any()) if t.ndim == 2 else False


def per_class_metrics(
    scores: Any,
    targets: Any,
    class_names: Sequence[str] | None = None,
    multilabel: bool | None = None,
    threshold: float = 0.5,
) -> list[dict]:
    """One row per class: ``index, name, support, predicted, precision, recall, ap, auc``.

    Single-label: predictions are the argmax. Multi-label: ``scores >= threshold`` (pass sigmoid
    probabilities). Support is the number of positives (targets >= 0.5). Undefined values (no
    positives, nothing predicted) are NaN.
    """
    s, t = _as_arrays(scores, targets)
    n, c = s.shape
    names = _names(class_names, c)
    if multilabel is None:
        multilabel = is_multilabel(t)
    positive = t >= 0.5
    if multilabel:
        predicted = s >= threshold
    else:
        predicted = np.zeros_like(positive)
        predicted[np.arange(n), s.argmax(axis=1)] = True
        positive = np.zeros_like(predicted)
        positive[np.arange(n), t.argmax(axis=1)] = True
    ap, auc = average_precision(s, t), roc_auc(s, t)
    rows = []
    for k in range(c):
        tp = int(np.sum(predicted[:, k] & positive[:, k]))
        n_pred, support = int(predicted[:, k].sum()), int(positive[:, k].sum())
        rows.append(
            {
                "index": k,
                "name": names[k],
                "support": support,
                "predicted": n_pred,
                "precision": tp / n_pred if n_pred else math.nan,
                "recall": tp / support if support else math.nan,
                "ap": float(ap[k]),
                "auc": float(auc[k]),
            }
        )
    return rows


def compute_metrics(
    scores: Any,
    targets: Any,
    class_names: Sequence[str] | None = None,
    multilabel: bool | None = None,
) -> dict:
    """All summary metrics as a JSON-ready dict.

    Keys: ``num_examples, num_classes, multilabel, acc, map, mauc, d_prime, map_classes,
    auc_classes, classes_without_positives``. ``acc`` is None for multi-label targets (use mAP);
    ``map_classes``/``auc_classes`` say over how many classes each mean ran.
    """
    s, t = _as_arrays(scores, targets)
    c = s.shape[1]
    names = _names(class_names, c)
    if multilabel is None:
        multilabel = is_multilabel(t)
    ap, auc = average_precision(s, t), roc_auc(s, t)
    m_ap = _mean_over_defined(ap, "mAP", names, "positive examples", warn=True)
    auc_ok = ~np.isnan(auc)
    m_auc = float(auc[auc_ok].mean()) if auc_ok.any() else math.nan
    return {
        "num_examples": int(s.shape[0]),
        "num_classes": c,
        "multilabel": bool(multilabel),
        "acc": None if multilabel else accuracy(s, t),
        "map": m_ap,
        "mauc": _json_float(m_auc),
        "d_prime": _json_float(d_prime(m_auc)) if auc_ok.any() else None,
        "map_classes": int((~np.isnan(ap)).sum()),
        "auc_classes": int(auc_ok.sum()),
        "classes_without_positives": [names[k] for k in np.flatnonzero(np.isnan(ap))],
    }


def _names(class_names: Sequence[str] | None, c: int) -> list[str]:
    if class_names is None:
        return [str(k) for k in range(c)]
    names = [str(x) for x in class_names]
    if len(names) != c:
        raise ValueError(f"{len(names)} class names for {c} classes")
    return names


def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


# --------------------------------------------------------------------------------------------------
# Evaluating a model


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
        atomic_write_bytes(folder / "per_class.csv", _csv_bytes([header, *rows]))
        atomic_write(folder / "scores.npz", self._write_scores)
        if not self.multilabel:
            cm = self.confusion
            rows = [[name] + row.tolist() for name, row in zip(self.class_names, cm, strict=True)]
            table = [["true \\ predicted"] + self.class_names, *rows]
            atomic_write_bytes(folder / "confusion.csv", _csv_bytes(table))
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


def _csv_bytes(rows: list[list]) -> bytes:
    """CSV as the csv module writes it (``\\r\\n`` line ends), UTF-8."""
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    return buf.getvalue().encode("utf-8")


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


def _has_head(model: AudioModel) -> bool:
    return (
        bool(getattr(model.config, "num_classes", 0)) and getattr(model, "mlp_head", 0) is not None
    )


def evaluate_model(
    model: AudioModel,
    data: Any,
    *,
    classes: Sequence[str] | None = None,
    batch_size: int = 32,
    target_length: int | None = None,
    normalize: Any = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    num_workers: int = 0,
    multilabel: bool | None = None,
    on_bad_file: str = "error",
) -> EvalResult:
    """Run a fine-tuned model over a labeled manifest and compute the metrics.

    Args:
        model: an :class:`~ssamba.models.model.AudioModel` with a classification head.
        data: a manifest path, a :class:`~ssamba.data.Manifest`, or an
            :class:`~ssamba.data.AudioDataset` (used as is: its own length and normalisation).
        classes: the names of the model's outputs, in order (``classes.json`` of a fine-tuned
            folder, or the training manifest's ``classes``). Default: the manifest's classes when
            their number matches the head (with a warning unless they came from a
            ``class_labels_indices.csv``). A manifest label not among them is an error.
        target_length: frames per clip (default ``model.config.input_tdim``).
        normalize: ``(mean, std)``, a preset name or stats JSON (default: the model's
            ``norm_mean``/``norm_std``).
        multilabel: default: the manifest's flag.
        on_bad_file: ``"error"`` (default) stops at a file that cannot be read (AudioError naming
            it); ``"skip"`` leaves it out of the metrics, counted in the notes. An
            :class:`~ssamba.data.AudioDataset` given as ``data`` keeps its own policy.
    """
    num_classes = _num_outputs(model, classes)
    if isinstance(data, AudioDataset):
        dataset, manifest = data, data.manifest
    else:
        manifest = data if isinstance(data, Manifest) else read_manifest(data, classes=classes)
        dataset = None
    if not manifest.labeled:
        raise EvaluationError(f"{manifest.source or 'the manifest'} has no labels to evaluate")
    _refuse_duplicates(manifest)
    notes: list[str] = []
    classes = _output_classes(classes, manifest, num_classes, notes)
    targets = _targets(manifest, classes)
    if multilabel is None:
        multilabel = bool(manifest.multilabel)
    if dataset is None:
        dataset = _eval_dataset(model, manifest, target_length, normalize, on_bad_file)
    loader = make_loader(dataset, batch_size, shuffle=False, num_workers=num_workers)
    scores, bad = _predict(model, loader, len(dataset), num_classes, torch.device(device), progress)
    paths = [str(ex.path) for ex in manifest.examples]
    if bad.any():  # files a skipping dataset could not read: no prediction, left out
        if bad.all():
            raise EvaluationError(f"{manifest.source}: no clip to evaluate: every file is bad")
        notes.append(f"{int(bad.sum())} bad file(s) left out of the metrics")
        scores, targets = scores[~bad], targets[~bad]
        paths = [p for p, b in zip(paths, bad, strict=True) if not b]

    metrics = compute_metrics(scores, targets, classes, multilabel)
    if metrics["classes_without_positives"]:
        missing = metrics["classes_without_positives"]
        notes.append(
            f"{len(missing)} of the model's {num_classes} classes have no example in this set: "
            f"mAP is over the {metrics['map_classes']} classes present"
        )
    metrics["main_metric"] = "map" if multilabel else "acc"
    return EvalResult(
        scores=scores,
        targets=targets,
        metrics=metrics,
        per_class=per_class_metrics(scores, targets, classes, multilabel),
        class_names=classes,
        multilabel=multilabel,
        paths=paths,
        display_names=dict(getattr(manifest, "display_names", {}) or {}),
        notes=notes,
    )


def _refuse_duplicates(manifest: Manifest) -> None:
    """A file listed twice would count twice in every metric."""
    seen: set = set()
    for ex in manifest.examples:
        key = (ex.path, ex.offset)  # a shard holds many clips, each at its own offset
        if key in seen:
            raise EvaluationError(
                f"{manifest.source}: {ex.path} is listed more than once (it would count twice); "
                "remove the duplicate rows (`ssamba check-data` lists them)"
            )
        seen.add(key)


def _num_outputs(model: AudioModel, classes: Sequence[str] | None) -> int:
    """The number of classes the model's head scores (checked against ``classes``)."""
    if not _has_head(model):
        raise EvaluationError(
            "the model has no classification head (num_classes=0): evaluate a fine-tuned model, "
            "or use its embeddings (model(fbank) returns the pooled embedding)"
        )
    num_classes = int(model.config.num_classes)
    if classes is not None and len(classes) != num_classes:
        raise EvaluationError(
            f"{len(classes)} class names given but the model has {num_classes} outputs"
        )
    return num_classes


def _output_classes(
    classes: Sequence[str] | None, manifest: Manifest, num_classes: int, notes: list[str]
) -> list[str]:
    """The names of the model's outputs: ``classes``, else the manifest's (with a note)."""
    if classes is None:
        classes = list(manifest.classes)
        if len(classes) != num_classes:
            raise EvaluationError(
                f"the model has {num_classes} outputs but the manifest has {len(classes)} "
                f"classes: pass the training classes (--classes: the training manifest, its "
                f"class_labels_indices.csv, or classes.json) so labels map to the right outputs"
            )
        if not manifest.display_names:
            msg = (
                "no class list given: assuming the model's outputs are the manifest's "
                f"{len(classes)} classes in sorted order (pass the training classes to be sure)"
            )
            warnings.warn(msg, MetricWarning, stacklevel=3)
            notes.append(msg)
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise EvaluationError("the class list contains duplicates")
    return classes


def _targets(manifest: Manifest, classes: list[str]) -> np.ndarray:
    """(N, C) multi-hot targets of the manifest's labels over ``classes``."""
    index = {name: k for k, name in enumerate(classes)}
    targets = np.zeros((len(manifest), len(classes)), dtype=np.float32)
    for i, ex in enumerate(manifest.examples):
        if not ex.labels:
            raise EvaluationError(f"{manifest.source}: no label for {ex.path}")
        for name in ex.labels:
            if name not in index:
                shown = ", ".join(classes[:8]) + (" ..." if len(classes) > 8 else "")
                raise EvaluationError(
                    f"{manifest.source}: label {name!r} of {ex.path} is not one of the model's "
                    f"classes ({shown})"
                )
            targets[i, index[name]] = 1.0
    return targets


def _eval_dataset(
    model: AudioModel,
    manifest: Manifest,
    target_length: int | None,
    normalize: Any,
    on_bad_file: str = "error",
) -> AudioDataset:
    """The manifest as the model was trained to see it (its input length and normalisation)."""
    if target_length is None:
        target_length = int(model.config.input_tdim)
    if normalize is None:
        normalize = (float(model.config.norm_mean), float(model.config.norm_std))
    return AudioDataset(manifest, target_length, normalize, train=False, on_bad_file=on_bad_file)


def head_scores(logits: torch.Tensor, head_loss: str) -> torch.Tensor:
    """A head's scores as its training loss reads its logits (last dimension: classes): softmax
    for ``"ce"``, a sigmoid per class for ``"bce"``."""
    if head_loss == "ce":
        return logits.float().softmax(dim=-1)
    if head_loss == "bce":
        return torch.sigmoid(logits.float())
    raise EvaluationError(f"head_loss must be 'ce' or 'bce', got {head_loss!r}")


def model_outputs(model, loader, device, *, forward=None, progress: bool = False):
    """Yields ``(batch, output)`` for every batch of ``loader``: the batch without the files its
    dataset flagged bad (a batch with none left is skipped), ``output`` = ``forward(model,
    fbank, batch)`` (default: ``model(fbank)``), in eval mode without gradients; the model's
    mode is restored."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    batches = tqdm(loader, desc="evaluate", unit="batch", dynamic_ncols=True, disable=not progress)
    try:
        with torch.inference_mode():
            for batch in batches:
                batch = drop_bad(batch)
                if batch is None:
                    continue
                fbank = batch["fbank"].to(device)
                yield batch, model(fbank) if forward is None else forward(model, fbank, batch)
    finally:
        model.train(was_training)


def predict(model, loader, device, *, forward=None, progress: bool = False):
    """The one prediction path of every scoring (fine-tuning's validation and test, ``ssamba
    evaluate``, DASL, cross-validation): :func:`model_outputs` with each output turned into the
    :func:`head_scores` of ``model.config.head_loss``, float32 on the CPU."""
    head_loss = model.config.head_loss
    for batch, logits in model_outputs(model, loader, device, forward=forward, progress=progress):
        yield batch, head_scores(logits, head_loss).cpu()


def _predict(
    model: AudioModel,
    loader,
    n: int,
    num_classes: int,
    device: torch.device,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """(n, C) scores of every example (:func:`predict`), and the (n,) mask of the bad files (the
    examples a skipping dataset left out)."""
    model.to(device)
    scores = np.zeros((n, num_classes), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    for batch, batch_scores in predict(model, loader, device, progress=progress):
        if batch_scores.dim() != 2 or batch_scores.shape[1] != num_classes:
            raise EvaluationError(
                f"model output has shape {tuple(batch_scores.shape)}, expected (batch, "
                f"{num_classes})"
            )
        idx = batch["index"].numpy()
        scores[idx] = batch_scores.numpy()
        seen[idx] = True
    return scores, ~seen


# --------------------------------------------------------------------------------------------------
# Class lists


def find_class_list(checkpoint: str | os.PathLike) -> Path | None:
    """``classes.json`` of a fine-tuned folder (or next to a ``.pth`` file), if any."""
    p = Path(checkpoint)
    folder = p if p.is_dir() else p.parent
    return folder / CLASSES_FILE if (folder / CLASSES_FILE).is_file() else None

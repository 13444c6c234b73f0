"""Classification metrics in plain numpy (no torch): what every scoring (fine-tuning, probes,
``ssamba evaluate``, cross-validation) computes from scores and targets, below all of them.

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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from ssamba.errors import EvaluationError

__all__ = [
    "MetricWarning",
    "accuracy",
    "average_precision",
    "compute_metrics",
    "confusion_matrix",
    "d_prime",
    "is_multilabel",
    "mean_auc",
    "mean_average_precision",
    "per_class_metrics",
    "roc_auc",
]


class MetricWarning(UserWarning):
    """A metric was computed over fewer classes than the model has (the message says which)."""


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
    """Sensitivity index ``sqrt(2) * Phi^-1(auc)`` (inf at AUC 1, -inf at 0, NaN for NaN)."""
    values = np.asarray(auc, dtype=np.float64)
    out = np.vectorize(_probit, otypes=[np.float64])(values) * math.sqrt(2.0)
    return float(out) if out.ndim == 0 else out


def _probit(p: float) -> float:
    """The standard normal quantile ``Phi^-1(p)``, its limits at 0 and 1 included."""
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        return math.nan
    if p in (0.0, 1.0):
        return math.copysign(math.inf, p - 0.5)
    return _STANDARD_NORMAL.inv_cdf(p)


_STANDARD_NORMAL = NormalDist()


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

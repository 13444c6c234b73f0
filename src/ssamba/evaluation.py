"""Scoring a model: the one prediction path and ``evaluate_model`` (behind ``ssamba evaluate``).

:func:`model_outputs` runs a model over a loader (eval mode, no gradients, bad files dropped, the
mode restored); :func:`predict` turns each output into the head's :func:`head_scores` (softmax
for a model fine-tuned with cross-entropy, sigmoid for one trained with binary cross-entropy, as
the official checkpoints). Fine-tuning's validation and test, cross-validation (through
fine-tuning), DASL and :func:`evaluate_model` all score this way.

:func:`evaluate_model` runs a fine-tuned model over a manifest and returns an
:class:`~ssamba.evaluation_report.EvalResult`; ``EvalResult.save(folder)`` writes its files. The
metrics themselves are plain numpy in :mod:`ssamba.metrics`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssamba.constants import CLASSES_FILE
from ssamba.data import AudioDataset, Manifest, drop_bad, make_loader, read_manifest
from ssamba.errors import EvaluationError
from ssamba.evaluation_report import EvalResult, plot_confusion

# the metrics live in ssamba.metrics; their names stay importable from here, their old home
from ssamba.metrics import (  # noqa: F401
    MetricWarning,
    accuracy,
    average_precision,
    compute_metrics,
    confusion_matrix,
    d_prime,
    is_multilabel,
    mean_auc,
    mean_average_precision,
    per_class_metrics,
    roc_auc,
)
from ssamba.models.model import AudioModel

__all__ = [
    "EvalResult",
    "EvaluationError",
    "evaluate_model",
    "find_class_list",
    "head_scores",
    "model_outputs",
    "plot_confusion",
    "predict",
]


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

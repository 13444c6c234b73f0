"""DASL training: :class:`DaslTask` for :func:`ssamba.training.fit`, and :func:`train_dasl`.

Cross-entropy averaged over chunks; validation reports per-chunk accuracy (``acc``: frame-level
accuracy, pooled over all chunks of all recordings; the watched metric), ``clip_acc`` (the mean
over recordings of each recording's accuracy) and ``balanced_acc`` (mean per-class recall).
Defaults (:class:`~ssamba.configs.DaslConfig`) follow the reference script
``src/finetune/urban8k/urban_amba.sh``: stride 16, batch 5, Adam lr 1e-4, 50 epochs, SpecAugment
(freqm 48, timem 192), lr x0.85 every 10 epochs from epoch 20, no warm-up, no mixup.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.audio import normalize_stats
from ssamba.configs import DaslConfig
from ssamba.dasl.dataset import DaslDataset, read_dasl_manifest
from ssamba.dasl.head import IGNORE, chunk_logits
from ssamba.dasl.metrics import dasl_metrics
from ssamba.data import read_splits
from ssamba.evaluation import predict
from ssamba.fileio import atomic_write_csv, atomic_write_json
from ssamba.finetune import ClassifierTask, build_model
from ssamba.training import (
    SUMMARY_FILE,
    Distributed,
    LRSchedule,
    ends_process_group,
    eval_loader,
    fit,
    load_chosen_model,
)

DASL_FILE = "dasl.json"  # written into every saved model folder: chunk length, recording length


class StepDecay(LRSchedule):
    """LR x ``factor`` after epochs ``start, start + every, ...`` (1-based counts), as the
    reference's ``MultiStepLR(range(start, 1000, every))``."""

    def __init__(self, warmup_steps=0, factor=0.85, start=20, every=10):
        super().__init__(warmup_steps, mode="step_decay", factor=factor, decay_start=start)
        self.every = every

    def end_epoch(self, epoch: int) -> None:
        done = epoch + 1
        if done >= self.decay_start and (done - self.decay_start) % self.every == 0:
            self.scale *= self.factor


class ChunkClassifier(nn.Module):
    """What DDP wraps: model + per-chunk cross-entropy."""

    def __init__(self, model, chunk_seconds: float):
        super().__init__()
        self.model, self.chunk_seconds = model, chunk_seconds

    def forward(self, fbank, labels):
        logits = chunk_logits(self.model, fbank, self.chunk_seconds, labels.shape[1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        return loss, logits


class DaslTask(ClassifierTask):
    """The DASL task for :func:`ssamba.training.fit` (the optimiser and loss of
    :class:`~ssamba.finetune.ClassifierTask`, per chunk)."""

    command = "dasl"
    target_key = "labels"
    watch = "acc"

    def __init__(self, cfg: DaslConfig, model, classes: list[str]):
        super().__init__(cfg, model, classes)
        self.module = ChunkClassifier(model, cfg.chunk_seconds)
        self.schedule = StepDecay(
            cfg.warmup_steps, cfg.lr_decay, cfg.lr_decay_start, cfg.lr_decay_every
        )

    def extra_files(self) -> dict[str, str]:
        info = {
            "task": "dasl",
            "chunk_seconds": self.cfg.chunk_seconds,
            "seconds": self.cfg.seconds,
        }
        return {**super().extra_files(), DASL_FILE: json.dumps(info, indent=1)}

    def predict(self, loader, dist: Distributed):
        """(predictions, labels): one (n_chunks,) tensor per recording, in dataset order (the
        argmax of each chunk's scores from :func:`ssamba.evaluation.predict`)."""
        chunk_seconds = loader.dataset.chunk_seconds

        def chunks(model, fbank, batch):
            return chunk_logits(model, fbank, chunk_seconds, batch["labels"].shape[1])

        part = []
        for batch, scores in predict(self.model, loader, dist.device, forward=chunks):
            pred = scores.argmax(-1)
            for k, i in enumerate(batch["index"].tolist()):
                part.append((i, pred[k], batch["labels"][k]))
        found = {}
        for i, p, y in (x for chunk in dist.gather(part) for x in chunk):
            found.setdefault(i, (p, y))  # the sampler pads with repeats: keep each once
        ranked = [found[i] for i in sorted(found)]
        return [p for p, _ in ranked], [y for _, y in ranked]

    def evaluate(self, loader, dist: Distributed) -> dict:
        preds, labels = self.predict(loader, dist)
        m = dasl_metrics(preds, labels, len(self.classes))
        return {k: m[k] for k in ("acc", "clip_acc", "balanced_acc")}


@ends_process_group
def train_dasl(cfg: DaslConfig, device: str | None = None) -> dict:
    """Train on ``cfg.train``, keep the best model on ``cfg.valid``, evaluate it on ``cfg.test``.

    Returns the summary (also in ``summary.json``); the test metrics go to ``test_metrics.json``
    and the test predictions (per-chunk class names) to ``test_predictions.csv``.
    """
    dist = Distributed.from_env(device)
    stats = normalize_stats(cfg.normalize)
    # one manifest with a split column serves all three; run.json records each as PATH[:SPLIT]
    splits = read_splits(
        cfg.train, cfg.valid, cfg.test, ignore_labels=True, allow_overlap=cfg.allow_overlap
    )
    cfg = dataclasses.replace(cfg, **{k: m.spec if m else None for k, m in splits.items()})
    train_items, classes = read_dasl_manifest(cfg.train)
    if cfg.seconds is None:
        cfg = dataclasses.replace(cfg, seconds=max(len(labels) for _, labels in train_items))

    def dataset(path, train):
        return DaslDataset(
            path,
            classes,
            chunk_seconds=cfg.chunk_seconds,
            seconds=cfg.seconds,
            normalize=stats,
            train=train,
            freqm=cfg.freqm if train else 0,
            timem=cfg.timem if train else 0,
            seed=cfg.seed,
        )

    torch.manual_seed(cfg.seed)
    task = DaslTask(cfg, build_model(cfg, len(classes), stats), classes)
    valid = dataset(cfg.valid, False) if cfg.valid else None
    summary = fit(task, cfg, dist, dataset(cfg.train, True), valid)
    if cfg.test:
        summary.update(evaluate_on_test(task, dataset(cfg.test, False), cfg, dist))
        if dist.is_main:
            atomic_write_json(Path(cfg.out) / SUMMARY_FILE, summary, default=str)
    return summary


def evaluate_on_test(task: DaslTask, test_set: DaslDataset, cfg: DaslConfig, dist: Distributed):
    """Evaluate the run's chosen model (best/, else final/) on ``test_set``; the main rank
    writes test_metrics.json and test_predictions.csv. Returns ``{"test": metrics,
    "test_model": the folder's name}``."""
    chosen = load_chosen_model(cfg.out, task.model)
    preds, labels = task.predict(eval_loader(test_set, dist, cfg.batch_size), dist)
    test = dasl_metrics(preds, labels, len(task.classes))
    if dist.is_main:
        out = Path(cfg.out)
        atomic_write_json(out / "test_metrics.json", test)
        rows = [
            [
                str(path),
                ";".join(task.classes[c] if c != IGNORE else "" for c in y.tolist()),
                ";".join(task.classes[c] for c in p.tolist()),
            ]
            for (path, _), y, p in zip(test_set.items, labels, preds, strict=True)
        ]
        atomic_write_csv(out / "test_predictions.csv", ["path", "labels", "predicted"], rows)
    return {"test": test, "test_model": chosen.name}

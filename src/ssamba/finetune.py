"""Fine-tuning on a labelled task (docs/training.md).

The head is LayerNorm -> Linear on the mean of the patch tokens (``pool="mean"``, the official
heads' input), the class token(s) (``"cls"``) or the time-mean of each frequency row of patches,
concatenated (``"bands"``: keeps the spectral layout a global mean throws away; ``"bands+std"``
adds each row's standard deviation over time); the whole encoder is trained with Adam, the head
at ``head_lr_mult`` times the learning rate, the learning rate multiplied by ``lr_decay`` every
epoch from ``lr_decay_start`` on, or at each of ``lr_milestones`` (``lr_schedule="milestones"``,
torch's MultiStepLR). Single-label tasks use cross-entropy (soft targets when mixup is on),
multi-label tasks binary cross-entropy. The model with the best validation metric is kept in
``best/`` and evaluated on ``test``.

Three options for small data or short budgets (docs/finetuning.md):

- ``head_init="probe"`` (LP-FT, Kumar et al. 2022): the linear probe of the frozen features the
  head reads (:func:`probe_head`) becomes the head before the first step, and the model is
  validated at step 0, so ``best/`` is never worse on ``valid`` than the probe;
- ``layer_decay``: every parameter's learning rate times ``layer_decay ** d``, ``d`` the number of
  layers between it and the head (:func:`layer_depth`);
- ``freeze_encoder_steps``: only the head trains for the first N steps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.averaging import average_checkpoints
from ssamba.checkpoints import checkpoint_config, load_model, model_stats
from ssamba.configs import FinetuneConfig
from ssamba.constants import CLASSES_FILE
from ssamba.data import AudioDataset, make_loader, read_splits
from ssamba.data.checks import duplicate_problems
from ssamba.errors import ManifestError, UsageError
from ssamba.evaluation import model_outputs, predict
from ssamba.fileio import atomic_write_json, atomic_write_text, staged_folder
from ssamba.metrics import compute_metrics
from ssamba.probe import LinearClassifier, probe_results, select_linear
from ssamba.training import (
    CHECKPOINTS,
    SUMMARY_FILE,
    TRAINER_STATE,
    Distributed,
    LRSchedule,
    Task,
    ends_process_group,
    eval_loader,
    fit,
    load_chosen_model,
)

log = logging.getLogger(__name__)

HEAD_PREFIX = "mlp_head."


class Classifier(nn.Module):
    """What DDP wraps: model + loss on a batch."""

    def __init__(self, model, loss: str):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, fbank, target):
        logits = self.model(fbank)
        if self.loss == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, target)
        else:
            loss = F.cross_entropy(logits, target)  # probabilities as targets: mixup-aware
        return loss, logits


class ClassifierTask(Task):
    """What fine-tuning and DASL share: Adam, the head at ``head_lr_mult`` times the learning
    rate, the loss of ``module(fbank, batch[target_key])`` and the class list in every saved
    model folder. Subclasses set ``command``, ``module``, ``schedule``, ``watch`` and
    ``evaluate``."""

    optimizer_class = torch.optim.Adam
    target_key = "target"

    def __init__(self, cfg, model, classes: list[str]):
        self.cfg, self.model, self.classes = cfg, model, classes

    def settings(self) -> dict:
        return self.cfg.settings()

    def extra_files(self) -> dict[str, str]:
        return {CLASSES_FILE: json.dumps(self.classes, indent=1)}

    def param_groups(self):
        """The body at ``lr`` times ``layer_decay ** depth`` (:func:`layer_depth`), the head at
        ``lr * head_lr_mult``; the body's groups carry ``frozen_until`` (no update before that
        step: ``freeze_encoder_steps``). One group per distinct rate, in parameter order."""
        decay = getattr(self.cfg, "layer_decay", 1.0)
        frozen = getattr(self.cfg, "freeze_encoder_steps", 0)
        config = self.model.config
        top = num_layers(config) + 1
        groups: dict[tuple, dict] = {}
        for name, param in self.model.named_parameters():
            if name.startswith(HEAD_PREFIX):
                key = ("head", self.cfg.lr * self.cfg.head_lr_mult, 0)
            else:
                scale = decay ** (top - layer_depth(name, config))
                key = ("body", self.cfg.lr * scale, frozen)
            group = groups.setdefault(key, {"params": [], "lr": key[1]})
            if key[2]:
                group["frozen_until"] = key[2]
            group["params"].append(param)
        return list(groups.values())

    def compute_loss(self, module, batch, step_seed):
        loss, _ = module(batch["fbank"], batch[self.target_key])
        return loss, {"loss": float(loss.detach())}


def num_layers(config) -> int:
    """Encoder layers counted by depth: SSAST blocks, SSAMBA layers (a bidirectional model's
    forward and flipped layers side by side, as pairs)."""
    pairs = config.arch == "ssamba" and config.bidirectional
    return config.depth // 2 if pairs else config.depth


_LAYER = re.compile(r"^encoder\.(?:layers|blocks)\.(\d+)\.")
_BOTTOM = ("patch_embed.", "pos_embed", "cls_token", "dist_token", "mask_embed")


def layer_depth(name: str, config) -> int:
    """How high parameter ``name`` sits, from 0 (the patch and positional embeddings, the class
    tokens) through k + 1 (encoder layer k, pairs of SSAMBA layers counted once) to
    ``num_layers(config) + 1`` (the final norm and the head)."""
    if name.startswith(_BOTTOM):
        return 0
    found = _LAYER.match(name)
    if found is None:
        return num_layers(config) + 1
    return int(found.group(1)) // (config.depth // num_layers(config)) + 1


class FinetuneTask(ClassifierTask):
    """Clip classification for :func:`ssamba.training.fit`."""

    command = "finetune"

    def __init__(self, cfg: FinetuneConfig, model, classes: list[str]):
        super().__init__(cfg, model, classes)
        self.watch = cfg.metric
        self.watch_higher = cfg.metric != "loss"
        # a head that starts as the probe is scored before any step (best/ starts from it)
        self.evaluate_first = cfg.head_init == "probe"
        self.module = Classifier(model, cfg.loss)
        self.schedule = LRSchedule(
            cfg.warmup_steps,
            mode=cfg.lr_schedule,
            factor=cfg.lr_decay,
            decay_start=cfg.lr_decay_start,
            milestones=cfg.lr_milestones,
        )

    def sampling(self) -> dict:
        return {"balanced": self.cfg.balanced}

    def predict(self, loader, dist: Distributed):
        """(scores, targets) over the whole dataset (:func:`ssamba.evaluation.predict`, the
        head's activation), gathered from every rank, in dataset order."""
        idx, scores, targets = [], [], []
        for batch, batch_scores in predict(self.model, loader, dist.device):
            scores.append(batch_scores)
            targets.append(batch["target"])
            idx.append(torch.as_tensor(batch["index"]))
        c = len(self.classes)
        local = (
            (torch.cat(idx), torch.cat(scores), torch.cat(targets))
            if idx  # (every clip of this rank may have been a bad file)
            else (torch.zeros(0, dtype=torch.long), torch.zeros(0, c), torch.zeros(0, c))
        )
        order, first = {}, []
        for i, s, t in dist.gather(local):
            for k in range(len(i)):  # the sampler pads with repeats: keep each clip once
                if int(i[k]) not in order:
                    order[int(i[k])] = len(first)
                    first.append((s[k], t[k]))
        if not first:
            raise ManifestError("no clip to evaluate: every file of the set is bad")
        ranked = [first[order[k]] for k in sorted(order)]
        return torch.stack([s for s, _ in ranked]), torch.stack([t for _, t in ranked])

    def evaluate(self, loader, dist: Distributed) -> dict:
        scores, targets = self.predict(loader, dist)
        metrics = compute_metrics(scores.numpy(), targets.numpy(), self.classes)
        found = {k: metrics.get(k) for k in ("acc", "map", "mauc", "d_prime")}
        found["loss"] = score_loss(scores, targets, self.cfg.loss)
        if found[self.watch] is None:
            raise UsageError(f"metric {self.watch!r} is undefined for this task: use --metric map")
        return {k: float(v) for k, v in found.items() if v is not None}


def score_loss(scores: torch.Tensor, targets: torch.Tensor, loss: str) -> float:
    """The training loss of the run, from its scores (:func:`ssamba.evaluation.head_scores`):
    cross-entropy of the softmax against the targets' distribution (``ce``), the mean binary
    cross-entropy per class (``bce``)."""
    p = scores.double().clamp(1e-12, 1 - 1e-12)
    t = targets.double()
    if loss == "ce":
        return float(-(t * p.log()).sum(dim=1).mean())
    return float(-(t * p.log() + (1 - t) * (1 - p).log()).mean())


def build_model(cfg, num_classes: int, stats, pool: str = "mean"):
    """The checkpoint ``cfg.checkpoint`` (else a fresh ``cfg.model``) with a ``num_classes`` head,
    laid out for ``cfg.target_length`` frames at ``cfg``'s strides (fine-tuning and DASL)."""
    overrides = dict(cfg.model_overrides)
    overrides.update(
        num_classes=num_classes,
        head_loss=getattr(cfg, "loss", "ce"),  # DASL: cross-entropy per chunk
        input_tdim=cfg.target_length,
        fstride=cfg.fstride,
        tstride=cfg.tstride,
        pool=pool,
        pretrain_heads=False,
    )
    if stats is not None:
        overrides.update(norm_mean=stats[0], norm_std=stats[1])
    return load_model(cfg.checkpoint or cfg.model, **overrides).train()


def inherit_layout(cfg: FinetuneConfig, main: bool = True) -> FinetuneConfig:
    """``cfg`` with its unset (None) input size and strides taken from the checkpoint, so a
    model pretrained at 256 frames and stride 16 is fine-tuned so unless told otherwise; a value
    given that differs from the checkpoint's is named in one line."""
    names = {"target_length": "input_tdim", "fstride": "fstride", "tstride": "tstride"}
    source = checkpoint_config(cfg.checkpoint) if cfg.checkpoint else None
    if source is None:
        return cfg
    ckpt = {name: getattr(source, field) for name, field in names.items()}
    values = {k: ckpt[k] if getattr(cfg, k) is None else getattr(cfg, k) for k in names}
    changed = [k for k in names if values[k] != ckpt[k]]
    if changed and main:
        shown = {"target_length": "{} frames"}
        told = ", ".join(shown.get(k, k + " {}").format(values[k]) for k in changed)
        had = ", ".join(shown.get(k, k + " {}").format(ckpt[k]) for k in changed)
        log.info("note: fine-tuning at %s (the checkpoint's: %s)", told, had)
    return dataclasses.replace(cfg, **values)


@ends_process_group
def finetune(cfg: FinetuneConfig, device: str | None = None) -> dict:
    """Fine-tune, select the best epoch on ``valid``, evaluate it on ``test``; returns a summary.

    The test metrics also go to ``test_metrics.json`` and into ``summary.json``."""
    dist = Distributed.from_env(device)
    cfg = inherit_layout(cfg, dist.is_main)
    stats = model_stats(cfg.normalize)
    # one manifest with a split column serves all three; run.json records each as PATH[:SPLIT]
    splits = read_splits(cfg.train, cfg.valid, cfg.test, allow_overlap=cfg.allow_overlap)
    cfg = dataclasses.replace(cfg, **{k: m.spec if m else None for k, m in splits.items()})
    train_manifest = splits["train"]
    if not train_manifest.labeled:
        raise UsageError(f"{cfg.train}: fine-tuning needs labels")
    classes = list(train_manifest.classes)
    if train_manifest.multilabel and cfg.loss != "bce":
        raise UsageError(f"{cfg.train} is multi-label: use --loss bce (and --metric map)")
    if cfg.average_epochs:  # the epoch checkpoints to average must survive until the end
        cfg = dataclasses.replace(cfg, keep=max(cfg.keep, cfg.epochs - cfg.average_epochs[0] + 2))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(classes), stats, pool=cfg.pool)
    stats = stats or model_stats(cfg.normalize, model)  # "auto": the checkpoint's own

    def dataset(manifest, train):
        return AudioDataset(
            manifest,
            cfg.target_length,
            stats,
            train=train,
            freqm=cfg.freqm,
            timem=cfg.timem,
            mixup=cfg.mixup,
            noise=cfg.noise,
            seed=cfg.seed,
            on_bad_file=cfg.on_bad_file,
        )

    def held_out(manifest, flag: str):
        if manifest is None:
            return None
        twice = duplicate_problems(manifest)
        if twice:  # as `ssamba evaluate`: a file listed twice would count twice in every metric
            raise ManifestError(
                f"--{flag} {manifest.source}: {twice[0][0]} is listed more than once (it would "
                "count twice); remove the duplicate rows (`ssamba check-data` lists them)"
            )
        return dataset(manifest, train=False)

    # both read before training, so that a bad test set stops the run before it starts
    valid_set, test_set = held_out(splits["valid"], "valid"), held_out(splits["test"], "test")
    head_probe = None
    if cfg.head_init == "probe":
        if valid_set is None:
            raise UsageError("--head-init probe needs --valid (the probe's L2 is chosen on it)")
        probe_sets = {"train": dataset(train_manifest, False), "valid": valid_set,
                      "test": test_set}  # fmt: skip
        head_probe = probe_head(model, probe_sets, cfg, dist.device)
    task = FinetuneTask(cfg, model, classes)
    summary = fit(task, cfg, dist, dataset(train_manifest, True), valid_set)
    if head_probe is not None:
        summary["head_probe"] = head_probe
    if cfg.test:
        summary.update(evaluate_on_test(task, test_set, cfg, dist))
    if cfg.average_epochs:
        summary.update(average_epoch_checkpoints(task, test_set, cfg, dist))
    if dist.is_main and (cfg.test or cfg.average_epochs or head_probe is not None):
        atomic_write_json(Path(cfg.out) / SUMMARY_FILE, summary, default=str)
    return summary


# ---------------------------------------------------------------------------- LP-FT
def head_inputs(model, dataset, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """What the head's Linear layer reads for every clip of ``dataset`` in eval mode: the pooled
    features after the head's LayerNorm without its affine part, ``(n, D)`` float64, and the
    targets ``(n, C)`` (files the dataset flags bad are left out)."""
    norm = model.mlp_head[0]

    def normalised(model, fbank, batch):
        return F.layer_norm(model.pooled(fbank).float(), norm.normalized_shape, eps=norm.eps)

    loader = make_loader(dataset, batch_size, shuffle=False)
    xs, ys = [], []
    for batch, x in model_outputs(model, loader, device, forward=normalised):
        xs.append(x.double().cpu())
        ys.append(batch["target"].double())
    if not xs:
        raise ManifestError(f"{dataset.manifest.source}: no clip to fit the probe on")
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def load_probe_into_head(model, probe: LinearClassifier) -> None:
    """Make the head compute exactly ``probe``'s logits: the probe's standardisation becomes the
    LayerNorm's affine part (gain 1 / std, shift -mean / std) and its weights the Linear's."""
    norm, linear = model.mlp_head[0], model.mlp_head[1]
    with torch.no_grad():
        std = torch.as_tensor(probe.std)
        norm.weight.copy_(1.0 / std)
        norm.bias.copy_(-torch.as_tensor(probe.mean) / std)
        linear.weight.copy_(probe.weight.T)
        linear.bias.copy_(probe.bias)


def probe_head(model, splits: dict, cfg: FinetuneConfig, device) -> dict:
    """LP-FT's first stage: fit the linear probe (that of ``ssamba probe``: standardised
    features, L-BFGS, the L2 weight chosen on "valid") on the frozen features the head reads
    (:func:`head_inputs` of the "train" split, clips as the validation sees them: no
    augmentation), load it into the head and return its results on every split given (the
    probe's own figures; step 0 of the run scores the same model on "valid")."""
    model.to(device)
    data = {
        name: head_inputs(model, ds, cfg.batch_size, device)
        for name, ds in splits.items()
        if ds is not None
    }
    multilabel = cfg.loss == "bce"  # the head's own loss: softmax CE or a sigmoid per class
    probe = select_linear(data, multilabel)
    load_probe_into_head(model, probe)
    results = probe_results(probe, data, multilabel, list(splits["train"].manifest.classes))
    log.info(
        "head initialised from the linear probe (l2 %g): valid %s %.4f",
        probe.l2,
        results["metric"],
        results["valid"][results["metric"]],
    )
    return {k: v for k, v in results.items() if k != "classes"}


def epoch_checkpoints(run: str | Path, first: int, last: int) -> list[Path]:
    """The checkpoints a run saved at the end of epochs ``first..last`` (1-based), in order:
    those whose trainer state sits at the start of the next epoch."""
    found = []
    for ckpt in sorted(Path(run, CHECKPOINTS).glob("step_*")):
        # mmap: the progress record is read without loading the optimiser state
        progress = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True,
                              mmap=True)["progress"]  # fmt: skip
        if progress["batch_in_epoch"] == 0 and first <= progress["epoch"] <= last:
            found.append(ckpt)
    return found


def average_epoch_checkpoints(task: FinetuneTask, test_set, cfg: FinetuneConfig, dist):
    """The official AudioSet trick: the mean of the epoch checkpoints of ``cfg.average_epochs``,
    written to ``averaged/`` and evaluated on ``test_set`` (when given). Returns the summary's
    ``averaged`` entry."""
    first, last = cfg.average_epochs
    folders = epoch_checkpoints(cfg.out, first, last)
    if not folders:
        return {"averaged": f"no checkpoint of epochs {first}-{last} (the run ended earlier)"}
    averaged = average_checkpoints(folders)
    if dist.is_main:
        with staged_folder(Path(cfg.out) / "averaged") as tmp:
            averaged.save_pretrained(tmp)
            for name, text in task.extra_files().items():
                atomic_write_text(tmp / name, text)
    entry = {"epochs": [first, last], "checkpoints": len(folders)}
    if test_set is not None:
        task.model.load_state_dict(averaged.state_dict())
        scores, targets = task.predict(eval_loader(test_set, dist, cfg.batch_size), dist)
        test = compute_metrics(scores.numpy(), targets.numpy(), task.classes)
        if dist.is_main:
            atomic_write_json(Path(cfg.out) / "averaged_test_metrics.json", test, default=str)
        entry["test"] = {k: v for k, v in test.items() if isinstance(v, int | float)}
    return {"averaged": entry}


def evaluate_on_test(task: FinetuneTask, test_set, cfg: FinetuneConfig, dist: Distributed):
    """Evaluate the run's chosen model (best/, else final/) on ``test_set``; the main rank
    writes the metrics to test_metrics.json. Returns ``{"test": scalar metrics, "test_model":
    the folder's name}``."""
    chosen = load_chosen_model(cfg.out, task.model)
    scores, targets = task.predict(eval_loader(test_set, dist, cfg.batch_size), dist)
    test = compute_metrics(scores.numpy(), targets.numpy(), task.classes)
    test["loss"] = score_loss(scores, targets, cfg.loss)
    if dist.is_main:
        atomic_write_json(Path(cfg.out) / "test_metrics.json", test, default=str)
    scalars = {k: v for k, v in test.items() if isinstance(v, int | float)}
    return {"test": scalars, "test_model": chosen.name}


__all__ = [
    "Classifier",
    "ClassifierTask",
    "FinetuneConfig",
    "FinetuneTask",
    "build_model",
    "finetune",
    "evaluate_on_test",
    "head_inputs",
    "layer_depth",
    "load_probe_into_head",
    "num_layers",
    "probe_head",
]

"""Fine-tuning on a labelled task (docs/finetuning.md) and ``ssamba finetune``.

The head is LayerNorm -> Linear on the mean of the patch tokens (``pool="mean"``, the official
heads' input), the class token(s) (``"cls"``) or the time-mean of each frequency row of patches,
concatenated (``"bands"``: keeps the spectral layout a global mean throws away); the whole
encoder is trained with Adam, the head at ``head_lr_mult`` times the learning rate, the
learning rate multiplied by ``lr_decay`` every epoch from ``lr_decay_start`` on. Single-label
tasks use cross-entropy (soft targets when mixup is on), multi-label tasks binary cross-entropy.
The model with the best validation metric is kept in ``best/`` and evaluated on ``--test``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssamba.models.config import POOLS
from ssamba.training import Distributed, LRSchedule, TrainConfig

log = logging.getLogger(__name__)
CLASSES_FILE = "classes.json"


@dataclass
class FinetuneConfig(TrainConfig):
    init: str | None = None  # a checkpoint (official .pth or our folder); None: random init
    model: str = "ssamba_tiny"  # the preset used when init is None
    train: str = ""
    valid: str | None = None
    test: str | None = None
    target_length: int = 1024
    normalize: str | None = "audioset"
    fstride: int = 10
    tstride: int = 10
    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0
    noise: bool = False
    loss: str = "ce"  # "ce" (single-label) or "bce" (multi-label, or the reference's SC recipe)
    metric: str = "acc"  # "acc" or "map": selects the best epoch
    head_lr_mult: float = 1.0
    lr_decay: float = 1.0
    lr_decay_start: int = 0
    pool: str = "mean"
    balanced: bool = False
    on_bad_file: str = "error"
    model_overrides: dict = field(default_factory=dict)
    lr: float = 1e-4
    weight_decay: float = 5e-7
    warmup_steps: int = 0

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in ("ce", "bce"):
            raise ValueError(f"loss must be 'ce' or 'bce', got {self.loss!r}")
        if self.metric not in ("acc", "map"):
            raise ValueError(f"metric must be 'acc' or 'map', got {self.metric!r}")


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


class FinetuneTask:
    optimizer_class = torch.optim.Adam

    def __init__(self, cfg: FinetuneConfig, model, classes: list[str]):
        self.cfg, self.model, self.classes = cfg, model, classes
        self.watch = cfg.metric
        self.module = Classifier(model, cfg.loss)
        self.schedule = LRSchedule(
            cfg.warmup_steps, mode="step_decay", factor=cfg.lr_decay, decay_start=cfg.lr_decay_start
        )
        self.extra_files = {CLASSES_FILE: json.dumps(classes, indent=1)}

    def settings(self) -> dict:
        base = {f.name for f in dataclasses.fields(TrainConfig)}
        own = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in base}
        return {"task": "finetune", **own, "classes": self.classes}

    def sampling(self) -> dict:
        return {"balanced": self.cfg.balanced}

    def param_groups(self):
        head = [p for n, p in self.model.named_parameters() if n.startswith("mlp_head.")]
        body = [p for n, p in self.model.named_parameters() if not n.startswith("mlp_head.")]
        return [
            {"params": body, "lr": self.cfg.lr},
            {"params": head, "lr": self.cfg.lr * self.cfg.head_lr_mult},
        ]

    def train_step(self, module, batch, step_seed, dist: Distributed, accum_steps: int):
        loss, _ = module(batch["fbank"], batch["target"])
        (loss / accum_steps).backward()
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def predict(self, dataset, dist: Distributed, batch_size: int):
        """(scores, targets) over the whole dataset, gathered from every rank, in dataset order."""
        from torch.utils.data import DataLoader

        from ssamba.data import make_sampler

        self.model.eval()
        sampler = make_sampler(dataset, 0, 0, dist.rank, dist.world_size, shuffle=False)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler)
        idx, scores, targets = [], [], []
        for batch in loader:
            logits = self.model(batch["fbank"].to(dist.device)).float().cpu()
            scores.append(torch.sigmoid(logits) if self.cfg.loss == "bce" else logits.softmax(-1))
            targets.append(batch["target"])
            idx.append(torch.as_tensor(batch["index"]))
        self.model.train()
        part = (torch.cat(idx), torch.cat(scores), torch.cat(targets))
        if dist.enabled:
            parts = [None] * dist.world_size
            torch.distributed.all_gather_object(parts, part)
        else:
            parts = [part]
        order, first = {}, []
        for i, s, t in parts:  # the sampler pads with repeats: keep each clip once
            for k in range(len(i)):
                if int(i[k]) not in order:
                    order[int(i[k])] = len(first)
                    first.append((s[k], t[k]))
        ranked = [first[order[k]] for k in sorted(order)]
        return torch.stack([s for s, _ in ranked]), torch.stack([t for _, t in ranked])

    def evaluate(self, valid_set, dist: Distributed, cfg: TrainConfig) -> dict:
        from ssamba.evaluation import compute_metrics

        scores, targets = self.predict(valid_set, dist, max(1, cfg.batch_size // dist.world_size))
        metrics = compute_metrics(scores.numpy(), targets.numpy(), self.classes)
        found = {k: metrics.get(k) for k in ("acc", "map", "mauc", "d_prime")}
        if found[self.watch] is None:
            raise ValueError(f"metric {self.watch!r} is undefined for this task: use --metric map")
        return {k: float(v) for k, v in found.items() if v is not None}


def build_model(cfg: FinetuneConfig, num_classes: int, stats):
    from ssamba.checkpoints import load_model

    overrides = dict(cfg.model_overrides)
    overrides.update(
        num_classes=num_classes,
        input_tdim=cfg.target_length,
        fstride=cfg.fstride,
        tstride=cfg.tstride,
        pool=cfg.pool,
        pretrain_heads=False,
    )
    if stats is not None:
        overrides.update(norm_mean=stats[0], norm_std=stats[1])
    return load_model(cfg.init or cfg.model, **overrides).train()


def finetune(cfg: FinetuneConfig, device: str | None = None) -> dict:
    """Fine-tune, select the best epoch on ``valid``, evaluate it on ``test``; returns a summary."""
    from ssamba.audio import normalize_stats
    from ssamba.data import AudioDataset, read_manifest
    from ssamba.training import fit

    dist = Distributed.from_env(device)
    stats = normalize_stats(cfg.normalize)
    train_manifest = read_manifest(cfg.train)
    if not train_manifest.labeled:
        raise ValueError(f"{cfg.train}: fine-tuning needs labels")
    classes = list(train_manifest.classes)
    if train_manifest.multilabel and cfg.loss != "bce":
        raise ValueError(f"{cfg.train} is multi-label: use --loss bce (and --metric map)")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(classes), stats)

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

    def held_out(path):
        return dataset(read_manifest(path, classes=classes), train=False) if path else None

    task = FinetuneTask(cfg, model, classes)
    summary = fit(task, cfg, dist, dataset(train_manifest, True), held_out(cfg.valid))
    if cfg.test:
        from ssamba.checkpoints import load_pretrained
        from ssamba.evaluation import compute_metrics

        out = Path(cfg.out)
        chosen = out / ("best" if (out / "best").is_dir() else "final")
        task.model.load_state_dict(load_pretrained(chosen).state_dict())
        scores, targets = task.predict(held_out(cfg.test), dist, cfg.batch_size)
        test = compute_metrics(scores.numpy(), targets.numpy(), classes)
        summary["test"] = {k: v for k, v in test.items() if isinstance(v, int | float)}
        summary["test_model"] = chosen.name
        if dist.is_main:
            (out / "test_metrics.json").write_text(json.dumps(test, indent=2, default=str))
            (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ---------------------------------------------------------------------------- command line
def add_finetune_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a (pretrained or random) model on a labelled task",
        description=(
            "Fine-tune SSAMBA or SSAST on labelled audio. --recipe loads a task's reference "
            "settings (see `ssamba prepare`); options given explicitly override it."
        ),
    )
    p.add_argument("--recipe", help="task recipe name (esc50, speechcommands_v2, ...)")
    p.add_argument("--train", required=True)
    p.add_argument("--valid")
    p.add_argument("--test")
    add_finetune_options(p)
    p.set_defaults(func=run_finetune)


def add_finetune_options(p) -> None:
    """The model, augmentation and optimisation options (shared with ``ssamba crossval``)."""
    from ssamba.training import add_train_arguments

    p.add_argument("--init", help="checkpoint: official .pth or a model folder; 'none': random")
    p.add_argument("--model", default="ssamba_tiny", help="preset for --init none")
    p.add_argument("--target-length", type=int)
    p.add_argument("--normalize", help="preset, 'mean,std' or stats JSON")
    p.add_argument("--fstride", type=int)
    p.add_argument("--tstride", type=int)
    p.add_argument("--freqm", type=int)
    p.add_argument("--timem", type=int)
    p.add_argument("--mixup", type=float)
    p.add_argument("--noise", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--loss", choices=("ce", "bce"))
    p.add_argument("--metric", choices=("acc", "map"))
    p.add_argument("--head-lr-mult", type=float)
    p.add_argument("--lr-decay", type=float)
    p.add_argument("--lr-decay-start", type=int)
    p.add_argument(
        "--pool",
        choices=POOLS,
        help="head input: mean patch token (default), class token(s), or per-band means",
    )
    p.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error")
    p.add_argument("--depth", type=int, help="override the preset's depth (random init only)")
    add_train_arguments(
        p, batch_size=None, lr=None, weight_decay=None, warmup_steps=None, epochs=None
    )


RECIPE_FIELDS = (
    "target_length normalize fstride tstride batch_size lr epochs freqm timem mixup noise loss "
    "metric head_lr_mult lr_decay lr_decay_start warmup_steps pool balanced weight_decay"
).split()


def config_from_args(args) -> FinetuneConfig:
    """Defaults < recipe < explicit options."""
    from ssamba.training import train_config_kwargs

    values: dict = {}
    if args.recipe:
        from ssamba.recipes import load_recipe

        values.update(load_recipe(args.recipe)["finetune"])
    explicit = {k: v for k, v in vars(args).items() if v is not None}
    for name in RECIPE_FIELDS:
        if name in explicit:
            values[name] = explicit[name]
    values.update({k: v for k, v in train_config_kwargs(args).items() if v is not None})
    init = None if args.init in (None, "none") else args.init
    overrides = {"depth": args.depth} if args.depth else {}
    return FinetuneConfig(
        **values,
        init=init,
        model=args.model,
        train=args.train,
        valid=args.valid,
        test=args.test,
        on_bad_file=args.on_bad_file,
        model_overrides=overrides,
    )


def run_finetune(args) -> int:
    from ssamba.training import configure_logging

    configure_logging(int(os.environ.get("RANK", "0")) == 0)
    cfg = config_from_args(args)
    summary = finetune(cfg, device=args.device)
    best = summary.get("best_metric")
    line = f"fine-tuning done: {summary['steps']} steps"
    if best is not None:
        line += f", best validation {cfg.metric} {best:.4f} at step {summary['best_step']}"
    if "test" in summary:
        line += f"; test {cfg.metric} {summary['test'].get(cfg.metric, float('nan')):.4f}"
    print(line)
    return 0

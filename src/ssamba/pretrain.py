"""Self-supervised pretraining (masked spectrogram patch modelling, docs/pretraining.md).

``ssamba pretrain``.

Each step runs two passes over the batch with independent cluster masks: a discriminative one
(InfoNCE over the clip's masked patches, ``cpredlayer``) and a generative one (MSE to the raw
patches, ``gpredlayer``); loss = nce + 10 * mse. Masks are drawn per clip from a generator keyed
by (seed, step, micro-step, clip index, pass), so they do not depend on the number of ranks or
workers, and validation masks by (seed, clip index) alone, so evaluations are comparable.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ssamba.models.patches import check_mask_size, draw_mask_index
from ssamba.training import Distributed, LRSchedule, TrainConfig

log = logging.getLogger(__name__)
OBJECTIVES = ("joint", "mpc", "mpg")


@dataclass
class PretrainConfig(TrainConfig):
    model: str = "ssamba_tiny"  # a preset, or a checkpoint to continue pretraining from
    train: str = ""
    valid: str | None = None
    target_length: int = 1024
    normalize: str | None = "audioset"  # preset, "mean,std", or a stats JSON from `ssamba stats`
    mask_patch: int | None = None  # default: 400 of 512 patches, scaled to the input length
    mask_mode: str = "cluster"  # "cluster" (SSAST), "random" or "frame"
    objective: str = "joint"
    mpg_weight: float = 10.0
    on_bad_file: str = "error"
    model_overrides: dict = field(default_factory=dict)  # e.g. {"depth": 4} for small tests

    def __post_init__(self):
        super().__post_init__()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")


def default_mask_patch(num_patches: int) -> int:
    """The reference masks 400 of 512 patches; keep that fraction for other input lengths."""
    return max(1, min(num_patches - 2, round(num_patches * 400 / 512)))


class MaskedPatchObjective(nn.Module):
    """The module DDP wraps: one forward = both passes of a pretraining step."""

    def __init__(self, model, objective: str, mpg_weight: float):
        super().__init__()
        self.model, self.objective, self.mpg_weight = model, objective, mpg_weight

    def forward(self, fbank, mask_c, mask_g):
        parts, loss = {}, 0.0
        if self.objective in ("joint", "mpc"):
            acc, nce = self.model.forward_pretrain(fbank, "mpc", mask_index=mask_c)
            loss = loss + nce
            parts.update(acc=acc.detach(), nce=nce.detach())
        if self.objective in ("joint", "mpg"):
            mse = self.model.forward_pretrain(fbank, "mpg", mask_index=mask_g)
            loss = loss + self.mpg_weight * mse
            parts["mse"] = mse.detach()
        parts["loss"] = loss.detach()
        return loss, parts


def clip_masks(indices, grid, mask_patch, mode, key) -> torch.Tensor:
    """One mask per clip from ``random.Random(key + clip index)``: (B, M)."""
    rows = [
        draw_mask_index(1, grid, mask_patch, mode, random.Random(f"{key}:{int(i)}"))
        for i in indices
    ]
    return torch.cat(rows)


class PretrainTask:
    watch = "acc"  # validation masked-patch accuracy drives the plateau halving

    def __init__(self, cfg: PretrainConfig, model):
        self.cfg, self.model = cfg, model
        grid = model.grid
        self.mask_patch = cfg.mask_patch or default_mask_patch(grid[0] * grid[1])
        check_mask_size(grid[0] * grid[1], self.mask_patch)
        self.module = MaskedPatchObjective(model, cfg.objective, cfg.mpg_weight)
        self.schedule = LRSchedule(cfg.warmup_steps, mode="plateau", factor=0.5, patience=2)

    def settings(self) -> dict:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        own = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in fields}
        return {
            "task": "pretrain",
            **own,
            "mask_patch": self.mask_patch,
            "model_config": vars(self.model.config),
        }

    def sampling(self) -> dict:
        return {}

    def param_groups(self):
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def train_step(self, module, batch, step_seed, dist: Distributed, accum_steps: int):
        fbank = batch["fbank"]
        grid = self.model.input_grid(fbank)
        key = ":".join(map(str, step_seed))
        mask_c = clip_masks(batch["index"], grid, self.mask_patch, self.cfg.mask_mode, f"c:{key}")
        mask_g = clip_masks(batch["index"], grid, self.mask_patch, self.cfg.mask_mode, f"g:{key}")
        loss, parts = module(fbank, mask_c.to(fbank.device), mask_g.to(fbank.device))
        (loss / accum_steps).backward()
        return loss, {k: float(v) for k, v in parts.items()}

    @torch.no_grad()
    def evaluate(self, valid_set, dist: Distributed, cfg: TrainConfig) -> dict:
        """Masked-patch accuracy/InfoNCE/MSE on the held-out set, this rank's share, averaged."""
        from torch.utils.data import DataLoader

        from ssamba.data import make_sampler

        self.model.eval()
        sampler = make_sampler(valid_set, 0, 0, dist.rank, dist.world_size, shuffle=False)
        loader = DataLoader(
            valid_set, batch_size=max(1, cfg.batch_size // dist.world_size), sampler=sampler
        )
        totals, count = {}, 0
        for batch in loader:
            fbank = batch["fbank"].to(dist.device)
            grid = self.model.input_grid(fbank)
            seed = f"valid:{cfg.seed}"
            mask_c = clip_masks(batch["index"], grid, self.mask_patch, "cluster", f"c:{seed}")
            mask_g = clip_masks(batch["index"], grid, self.mask_patch, "cluster", f"g:{seed}")
            acc, nce = self.model.forward_pretrain(fbank, "mpc", mask_index=mask_c.to(fbank.device))
            mse = self.model.forward_pretrain(fbank, "mpg", mask_index=mask_g.to(fbank.device))
            n = fbank.shape[0]
            for k, v in (("acc", acc), ("nce", nce), ("mse", mse)):
                totals[k] = totals.get(k, 0.0) + float(v) * n
            count += n
        self.model.train()
        return dist.weighted_mean(totals, count)


def build_model(cfg: PretrainConfig, stats):
    """A fresh preset, or a checkpoint to continue from, laid out for ``target_length`` frames."""
    from ssamba.checkpoints import load_model

    overrides = dict(cfg.model_overrides)
    overrides.update(input_tdim=cfg.target_length, pretrain_heads=True, fstride=16, tstride=16)
    if stats is not None:
        overrides.update(norm_mean=stats[0], norm_std=stats[1])
    model = load_model(cfg.model, **overrides)
    return model.train()


def pretrain(cfg: PretrainConfig, device: str | None = None) -> dict:
    """Run (or resume) a pretraining job; returns the summary."""
    from ssamba.audio import normalize_stats
    from ssamba.data import AudioDataset, read_manifest
    from ssamba.training import fit

    dist = Distributed.from_env(device)
    stats = normalize_stats(cfg.normalize)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, stats)

    def dataset(path):
        manifest = read_manifest(path, ignore_labels=True)
        return AudioDataset(
            manifest,
            cfg.target_length,
            stats,
            train=False,  # pretraining uses no augmentation
            seed=cfg.seed,
            on_bad_file=cfg.on_bad_file,
        )

    train_set = dataset(cfg.train)
    valid_set = dataset(cfg.valid) if cfg.valid else None
    if valid_set is None and dist.is_main:
        log.warning("no --valid set: the learning rate is never halved and best/ is not written")
    return fit(PretrainTask(cfg, model), cfg, dist, train_set, valid_set)


# ---------------------------------------------------------------------------- command line
def add_pretrain_parser(subparsers) -> None:
    from ssamba.training import add_train_arguments

    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining (masked spectrogram patch modelling)",
        description=(
            "Pretrain SSAMBA or SSAST on unlabeled audio with the joint discriminative (InfoNCE) "
            "and generative (MSE) masked-patch objective. Runs under torchrun for several "
            "processes/nodes (DDP)."
        ),
    )
    p.add_argument("--model", default="ssamba_tiny", help="preset name or checkpoint to continue")
    p.add_argument("--train", required=True, help="audio folder, list or manifest")
    p.add_argument("--valid", help="held-out audio for masked-patch accuracy")
    p.add_argument("--target-length", type=int, default=1024, help="frames per clip (10 ms each)")
    p.add_argument("--normalize", default="audioset", help="preset, 'mean,std' or stats JSON")
    p.add_argument("--mask-patch", type=int, help="masked patches per clip (default 400/512)")
    p.add_argument("--mask-mode", choices=("cluster", "random", "frame"), default="cluster")
    p.add_argument("--objective", choices=OBJECTIVES, default="joint")
    p.add_argument("--mpg-weight", type=float, default=10.0)
    p.add_argument("--on-bad-file", choices=("error", "skip"), default="error")
    p.add_argument("--depth", type=int, help="override the preset's depth (small experiments)")
    p.add_argument("--drop-path", type=float, help="override the stochastic depth rate")
    add_train_arguments(p)
    p.set_defaults(func=run_pretrain)


def run_pretrain(args) -> int:
    from ssamba.training import configure_logging, train_config_kwargs

    configure_logging(int(__import__("os").environ.get("RANK", "0")) == 0)
    cfg = PretrainConfig(
        **train_config_kwargs(args),
        model=args.model,
        train=args.train,
        valid=args.valid,
        target_length=args.target_length,
        normalize=args.normalize,
        mask_patch=args.mask_patch,
        mask_mode=args.mask_mode,
        objective=args.objective,
        mpg_weight=args.mpg_weight,
        on_bad_file=args.on_bad_file,
        model_overrides={
            k: v for k, v in (("depth", args.depth), ("drop_path", args.drop_path)) if v is not None
        },
    )
    summary = pretrain(cfg, device=args.device)
    print(
        f"pretraining done: {summary['steps']} steps in {summary['seconds']} s -> {cfg.out}/final"
    )
    return 0

"""Self-supervised pretraining (masked spectrogram patch modelling, docs/pretraining.md).

Each step runs two passes over the batch with independent cluster masks: a discriminative one
(InfoNCE over the clip's masked patches, ``cpredlayer``) and a generative one (MSE to the raw
patches, ``gpredlayer``); loss = nce + 10 * mse. Masks are drawn per clip from a generator keyed
by (seed, step, micro-step, clip index, pass), so they do not depend on the number of ranks or
workers, and validation masks by (seed, clip index) alone, so evaluations are comparable.
Validation always uses cluster masks at the official M (400 of 512 patches, the same fraction for
other input lengths), whatever the training masks: runs at 250, 300 or 400 masked patches, or with
random or frame masks, are then halved and choose their best model on the same task.
"""

from __future__ import annotations

import logging
import random

import torch
import torch.nn as nn

from ssamba.checkpoints import load_model, model_stats
from ssamba.configs import OBJECTIVES, PretrainConfig
from ssamba.data import AudioDataset, drop_bad, read_manifest
from ssamba.errors import ManifestError, UsageError
from ssamba.models.model import create_model
from ssamba.models.patches import check_mask_size, draw_mask_index
from ssamba.training import Distributed, LRSchedule, Task, ends_process_group, fit

log = logging.getLogger(__name__)


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


class PretrainTask(Task):
    """Masked patch modelling for :func:`ssamba.training.fit`."""

    command = "pretrain"
    watch = "acc"  # validation masked-patch accuracy drives the plateau halving

    def __init__(self, cfg: PretrainConfig, model):
        self.cfg, self.model = cfg, model
        grid = model.grid
        num_patches = grid[0] * grid[1]
        self.mask_patch = cfg.mask_patch or default_mask_patch(num_patches)
        if not 1 <= self.mask_patch <= num_patches - 2:  # patch 0 is never masked
            raise UsageError(
                f"mask_patch {self.mask_patch}: a clip of {cfg.target_length} frames has "
                f"{num_patches} patches, of which at most {max(num_patches - 2, 0)} can be "
                "masked; lower --mask-patch or raise --target-length"
            )
        check_mask_size(num_patches, self.mask_patch)
        self.valid_mask_patch = default_mask_patch(num_patches)  # the official M = 400 of 512
        self.module = MaskedPatchObjective(model, cfg.objective, cfg.mpg_weight)
        self.unused_parameters = cfg.objective != "joint"  # one head is idle
        self.schedule = LRSchedule(cfg.warmup_steps, mode="plateau", factor=0.5, patience=2)

    def settings(self) -> dict:
        return {**self.cfg.settings(), "mask_patch": self.mask_patch}

    def param_groups(self):
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def masks(
        self, batch, fbank, mode: str, key: str, mask_patch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The clips' masks for the discriminative and the generative pass, on fbank's device
        (``mask_patch`` patches each; default: the training M)."""
        grid = self.model.input_grid(fbank)
        m = mask_patch or self.mask_patch
        c = clip_masks(batch["index"], grid, m, mode, f"c:{key}")
        g = clip_masks(batch["index"], grid, m, mode, f"g:{key}")
        return c.to(fbank.device), g.to(fbank.device)

    def compute_loss(self, module, batch, step_seed):
        fbank = batch["fbank"]
        mask_c, mask_g = self.masks(batch, fbank, self.cfg.mask_mode, ":".join(map(str, step_seed)))
        loss, parts = module(fbank, mask_c, mask_g)
        return loss, {k: float(v) for k, v in parts.items()}

    @torch.no_grad()
    def evaluate(self, loader, dist: Distributed) -> dict:
        """Masked-patch accuracy/InfoNCE/MSE on the held-out set, with cluster masks of the
        official size (:attr:`valid_mask_patch`) fixed by (seed, clip index), so that
        evaluations are comparable within a run and across runs of any training mask."""
        self.model.eval()
        totals, count = {}, 0
        for batch in loader:
            batch = drop_bad(batch)
            if batch is None:
                continue
            fbank = batch["fbank"].to(dist.device)
            key = f"valid:{self.cfg.seed}"
            mask_c, mask_g = self.masks(batch, fbank, "cluster", key, self.valid_mask_patch)
            acc, nce = self.model.forward_pretrain(fbank, "mpc", mask_index=mask_c)
            mse = self.model.forward_pretrain(fbank, "mpg", mask_index=mask_g)
            n = fbank.shape[0]
            for k, v in (("acc", acc), ("nce", nce), ("mse", mse)):
                totals[k] = totals.get(k, 0.0) + float(v) * n
            count += n
        self.model.train()
        if not dist.enabled and count == 0:
            raise ManifestError("no clip to validate on: every file of --valid is bad")
        return dist.weighted_mean(totals, count)


def build_model(cfg: PretrainConfig, stats):
    """A fresh preset, or the checkpoint to continue from, laid out for ``target_length`` frames."""
    overrides = dict(cfg.model_overrides)
    overrides.update(input_tdim=cfg.target_length, pretrain_heads=True, fstride=16, tstride=16)
    if stats is not None:
        overrides.update(norm_mean=stats[0], norm_std=stats[1])
    if cfg.checkpoint is None:  # from scratch: random weights are the point, no warning
        return create_model(cfg.model, **overrides).train()
    return load_model(cfg.checkpoint, **overrides).train()


@ends_process_group
def pretrain(cfg: PretrainConfig, device: str | None = None) -> dict:
    """Run (or resume) a pretraining job; returns the summary."""
    dist = Distributed.from_env(device)
    stats = model_stats(cfg.normalize)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, stats)
    stats = stats or model_stats(cfg.normalize, model)
    task = PretrainTask(cfg, model)  # checks the mask size before any data is read

    def dataset(path, train: bool):
        manifest = read_manifest(path, ignore_labels=True)
        return AudioDataset(
            manifest,
            cfg.target_length,
            stats,
            train=False,  # pretraining uses no augmentation
            seed=cfg.seed,
            on_bad_file=cfg.on_bad_file,
            substitute=train,  # validation leaves bad clips out instead
            window="random" if train else "start",  # a new part of a long recording each epoch
        )

    train_set = dataset(cfg.train, True)
    valid_set = dataset(cfg.valid, False) if cfg.valid else None
    if valid_set is None and dist.is_main:
        log.warning("no --valid set: the learning rate is never halved and best/ is not written")
    return fit(task, cfg, dist, train_set, valid_set)


__all__ = [
    "OBJECTIVES",
    "MaskedPatchObjective",
    "PretrainConfig",
    "PretrainTask",
    "build_model",
    "clip_masks",
    "default_mask_patch",
    "pretrain",
]

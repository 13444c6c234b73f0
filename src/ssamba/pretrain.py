"""Self-supervised pretraining (masked spectrogram patch modelling, docs/pretraining.md).

Each step runs two passes over the batch with independent cluster masks: a discriminative one
(InfoNCE over the clip's masked patches, ``cpredlayer``) and a generative one (MSE to the raw
patches, ``gpredlayer``); loss = nce + 10 * mse. Masks are drawn per clip from a generator keyed
by (seed, step, micro-step, clip index, pass), so they do not depend on the number of ranks or
workers, and validation masks by (seed, clip index) alone, so evaluations are comparable.
Validation always uses cluster masks at the official M (400 of 512 patches, the same fraction for
other input lengths), whatever the training masks: runs at 250, 300 or 400 masked patches, or with
random or frame masks, are then halved and choose their best model on the same task.

``--objective teacher`` (:class:`TeacherTask`, the objective itself in :mod:`ssamba.teacher`) is
ours, not the paper's: an EMA teacher's averaged layer outputs as targets for the hidden patches
of several masked views per clip (data2vec 2.0 / EAT family).

The online probe (``--probe``, :class:`OnlineProbe`) scores the frozen features during the run:
``ssamba probe``'s linear probe (and a kNN vote) on labelled sets, at step 0, every
``probe_every`` steps and at the end, on rank 0 while the other ranks wait.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ssamba.checkpoints import load_model, model_stats
from ssamba.configs import OBJECTIVES, PretrainConfig, parse_probe_spec
from ssamba.data import (
    DECODED_INPUTS,
    AudioDataset,
    Manifest,
    check_input,
    drop_bad,
    read_splits,
)
from ssamba.embeddings import POOLINGS, model_device, resolve_layers
from ssamba.errors import AudioError, ManifestError, SsambaError, TrainingError, UsageError
from ssamba.models.model import create_model
from ssamba.models.patches import check_mask_size, draw_mask_index
from ssamba.probe import holdout_split, probe_scores, subsample
from ssamba.teacher import STUDENT_ONLY, TeacherObjective, view_masks
from ssamba.training import (
    Distributed,
    LRSchedule,
    StepCallback,
    Task,
    ends_process_group,
    fit,
)

log = logging.getLogger(__name__)

PROBE_HOLDOUT = 0.2  # of TRAIN held out as the probe's TEST when --probe gives none
BEST_PROBE = "best_probe"  # RUN/best_probe/: the model of the best mean probe score
BEST_PROBE_FILE = "probe.json"  # in it: the step and the scores that selected it


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
        key = f"valid:{self.cfg.seed}"

        def parts(batch, fbank):
            mask_c, mask_g = self.masks(batch, fbank, "cluster", key, self.valid_mask_patch)
            acc, nce = self.model.forward_pretrain(fbank, "mpc", mask_index=mask_c)
            mse = self.model.forward_pretrain(fbank, "mpg", mask_index=mask_g)
            return {"acc": acc, "nce": nce, "mse": mse}

        return held_out_means(self.model, loader, dist, parts)


def held_out_means(module, loader, dist: Distributed, parts_of) -> dict:
    """The clip-weighted means over the held-out set of ``parts_of(batch, fbank)`` (name ->
    scalar) in eval mode (training mode restored), reduced over ranks; bad files left out."""
    module.eval()
    totals, count = {}, 0
    try:
        for batch in loader:
            batch = drop_bad(batch)
            if batch is None:
                continue
            fbank = batch["fbank"].to(dist.device)
            n = fbank.shape[0]
            for k, v in parts_of(batch, fbank).items():
                totals[k] = totals.get(k, 0.0) + float(v) * n
            count += n
    finally:
        module.train()
    if not dist.enabled and count == 0:
        raise ManifestError("no clip to validate on: every file of --valid is bad")
    return dist.weighted_mean(totals, count)


class TeacherTask(Task):
    """The teacher objective (``--objective teacher``, :mod:`ssamba.teacher`) for
    :func:`ssamba.training.fit`: the student is ``model`` (what is saved), the EMA teacher and
    the decoder are the task's own state (every checkpoint's trainer state holds them)."""

    command = "pretrain"
    # Validation: the objective's loss against the current teacher, negated (higher is better).
    # The targets move with the teacher, so it compares nearby evaluations only; the online
    # probe (--probe, --keep-best-probe) is the better judge of a teacher run's features.
    watch, watch_higher = "loss", False  # the objective's validation loss: lower is better

    def __init__(self, cfg: PretrainConfig, model):
        self.cfg, self.model = cfg, model
        f_dim, t_dim = model.grid
        num_patches = f_dim * t_dim
        self.num_masked = round(cfg.mask_ratio * num_patches)
        if not 1 <= self.num_masked <= num_patches - 1:
            raise UsageError(
                f"--mask-ratio {cfg.mask_ratio:g} hides {self.num_masked} of the {num_patches} "
                f"patches of a {cfg.target_length}-frame clip; at least one must be hidden and "
                "one visible: change --mask-ratio or --target-length"
            )
        self.freeze_unused(model, cfg.hide_masked == "drop")
        self.module = TeacherObjective(model, cfg)
        self.schedule = LRSchedule(cfg.warmup_steps, mode="plateau", factor=0.5, patience=2)

    @staticmethod
    def freeze_unused(model, drop: bool) -> None:
        """The masked-patch heads (and the mask token when hidden patches are dropped) take no
        part: frozen, so that DDP needs no search for unused parameters and the optimiser leaves
        them as they are (the saved model keeps them: it loads like any pretrained one)."""
        for name in STUDENT_ONLY:
            part = getattr(model, name, None)
            if part is None or (name == "mask_embed" and not drop):
                continue
            part.requires_grad_(False)

    def settings(self) -> dict:
        return self.cfg.settings()

    def param_groups(self):
        """The student's trained parameters and the decoder's (the teacher is frozen)."""
        return [{"params": [p for p in self.module.parameters() if p.requires_grad]}]

    def masks(self, batch, fbank, key: str, views: int) -> torch.Tensor:
        """(B, views, hidden patches) on fbank's device (:func:`ssamba.teacher.view_masks`)."""
        grid = self.model.input_grid(fbank)
        masks = view_masks(batch["index"], grid, self.num_masked, views, self.cfg.mask_block, key)
        return masks.to(fbank.device)

    def compute_loss(self, module, batch, step_seed):
        fbank = batch["fbank"]
        key = ":".join(map(str, step_seed))
        loss, parts = module(fbank, self.masks(batch, fbank, key, self.cfg.masks_per_clip))
        metrics = {k: float(v) for k, v in parts.items()}
        metrics["ema_decay"] = self.module.decay_at(step_seed[1])  # of this step's EMA update
        return loss, metrics

    def after_update(self, step: int) -> None:
        self.module.update_teacher(step)

    @torch.no_grad()
    def evaluate(self, loader, dist: Distributed) -> dict:
        """The objective's losses on the held-out set: one view per clip, masks fixed by (seed,
        clip index), targets from the current teacher."""
        key = f"valid:{self.cfg.seed}"

        def parts(batch, fbank):
            return self.module(fbank, self.masks(batch, fbank, key, 1))[1]

        return held_out_means(self.module, loader, dist, parts)

    def state_dict(self) -> dict:
        return {
            "teacher": self.module.teacher.state_dict(),
            "decoder": self.module.decoder.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            raise TrainingError(
                "--resume: the checkpoint holds no teacher (it is not from a --objective teacher "
                "run)"
            )
        self.module.teacher.load_state_dict(state["teacher"])
        self.module.decoder.load_state_dict(state["decoder"])


def pretrain_task(cfg: PretrainConfig, model) -> Task:
    """The task of ``cfg.objective``: the teacher objective, or masked patch modelling."""
    return TeacherTask(cfg, model) if cfg.objective == "teacher" else PretrainTask(cfg, model)


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
    # one manifest with a split column serves both; run.json records each as PATH[:SPLIT]
    splits = read_splits(cfg.train, cfg.valid, roles=("train", "valid"), ignore_labels=True,
                         allow_overlap=cfg.allow_overlap)  # fmt: skip
    cfg = dataclasses.replace(cfg, **{k: m.spec if m else None for k, m in splits.items()})
    stats = model_stats(cfg.normalize)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, stats)
    stats = stats or model_stats(cfg.normalize, model)
    task = pretrain_task(cfg, model)  # checks the mask size before any data is read

    def dataset(manifest, train: bool):
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

    probe = online_probe(cfg, model)  # a bad probe set stops the run here, before it starts
    train_set = dataset(splits["train"], True)
    valid_set = dataset(splits["valid"], False) if splits["valid"] else None
    if valid_set is None and dist.is_main:
        log.warning("no --valid set: the learning rate is never halved and best/ is not written")
    return fit(task, cfg, dist, train_set, valid_set, callback=probe)


# ---------------------------------------------------------------------------- the online probe
@dataclass
class ProbeSet:
    """One set of the online probe: a linear probe fit on ``train``, scored on ``test``."""

    name: str
    train: Manifest
    test: Manifest


def online_probe(cfg: PretrainConfig, model) -> OnlineProbe | None:
    """The run's :class:`OnlineProbe` (None without ``--probe``); its options and manifests are
    checked here, so that a bad one stops the run before training starts."""
    if not cfg.probe:
        return None
    if cfg.probe_pooling not in POOLINGS:
        raise UsageError(
            f"--probe-pooling must be one of {', '.join(POOLINGS)}, got {cfg.probe_pooling!r}"
        )
    try:
        resolve_layers(model, cfg.probe_layers)
    except UsageError as err:
        raise UsageError(f"--probe-layers: {err}") from None
    return OnlineProbe(cfg, model, read_probe_sets(cfg))


def read_probe_sets(cfg: PretrainConfig) -> list[ProbeSet]:
    """The ``--probe`` sets: manifests read, TEST held out of TRAIN when not given (a stratified
    :data:`PROBE_HOLDOUT` drawn with the run's seed), each split cut to ``probe_max_files`` (a
    subset drawn with the seed), and every set named (default: TRAIN's parent folder)."""
    sets: list[ProbeSet] = []
    for spec in cfg.probe:
        name, train_path, test_path = parse_probe_spec(spec)
        try:
            train, test = _probe_manifests(train_path, test_path, cfg.seed, cfg.allow_overlap)
        except (SsambaError, OSError) as err:
            raise UsageError(f"--probe {spec}: {err}") from None
        name = _unique_name(name or _default_probe_name(train_path), {s.name for s in sets})
        cap = cfg.probe_max_files
        sets.append(ProbeSet(name, subsample(train, cap, cfg.seed), subsample(test, cap, cfg.seed)))
    return sets


def _probe_manifests(train_path: str, test_path: str | None, seed: int, allow_overlap: bool):
    """TRAIN and TEST of a probe set, read as ``--train``/``--valid`` are (PATH:SPLIT; a
    manifest with a split column: its train rows, and its valid rows as TEST unless TEST is
    given); TEST held out of TRAIN when neither gives one."""
    for path in (train_path, test_path):
        if path is not None:
            check_input(path, DECODED_INPUTS, "`ssamba pretrain --probe`")
    sets = read_splits(train_path, test_path, roles=("train", "valid"), allow_overlap=allow_overlap)
    train, test = sets["train"], sets["valid"]
    if not train.labeled:
        raise UsageError(f"{train_path}: no labels; the probe needs a labelled manifest")
    if test is None:
        return holdout_split(train, PROBE_HOLDOUT, seed)
    return train, test


def _default_probe_name(train_path: str) -> str:
    name = Path(train_path).expanduser().resolve().parent.name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "probe"


def _unique_name(name: str, taken: set[str]) -> str:
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}_{n}"
    return unique


class OnlineProbe(StepCallback):
    """``ssamba pretrain --probe``: ``ssamba probe``'s linear probe of the current weights (and a
    kNN vote) on every probe set, logged as ``probe/<name>/score``, ``probe/<name>/knn``,
    ``probe/score`` (the mean) and ``probe/seconds``; with ``keep_best_probe`` the model of the
    best ``probe/score`` is kept in ``RUN/best_probe/``.

    Rank 0 probes while the other ranks wait in a collective (DDP's next all-reduce would block
    them anyway; waiting keeps every rank at the same step, so resume stays exact). The probe
    leaves training as it was: the model's train mode and every random number generator are
    restored, so a run with a probe ends with the weights of one without."""

    def __init__(self, cfg: PretrainConfig, model, sets: list[ProbeSet]):
        self.cfg, self.model, self.sets = cfg, model, sets
        self.best_score, self.best_step = -math.inf, -1
        self.seconds = 0.0  # spent probing in this session

    def due(self, step: int, plan) -> bool:
        """Step 0, every ``probe_every`` steps (0: with the evaluations) and the last step."""
        every = self.cfg.probe_every or plan.eval_every
        return step % every == 0 or step == plan.max_steps

    def after_step(self, step: int, plan, dist: Distributed, run) -> None:
        if not self.due(step, plan):
            return
        error = None
        if dist.is_main:
            try:
                self.probe(step, run)
            except Exception as err:  # raised below, once the other ranks know
                error = err
        # The other ranks wait here; the collective also tells them if rank 0 failed, so no
        # rank is left waiting for one that stopped.
        if not dist.all_true(error is None):
            if error is not None:
                raise error
            raise TrainingError(f"the online probe failed on rank 0 at step {step} (see its error)")

    def probe(self, step: int, run) -> None:
        """Score every set, log the scores and keep the best model (the main rank)."""
        started = time.perf_counter()
        scores = self.scores()
        seconds = time.perf_counter() - started
        self.seconds += seconds
        mean = float(np.mean([s["score"] for s in scores.values()]))
        record: dict = {"kind": "probe", "step": step}
        for name, result in scores.items():
            record[f"probe/{name}/score"] = result["score"]
            if "knn" in result:
                record[f"probe/{name}/knn"] = result["knn"]
        record.update({"probe/score": mean, "probe/seconds": round(seconds, 3)})
        run.log_metrics(record)
        shown = ", ".join(f"{k[6:]} {v:.4f}" for k, v in record.items() if k.startswith("probe/"))
        log.info("step %d probe: %s", step, shown)
        if mean > self.best_score:
            self.best_score, self.best_step = mean, step
            if self.cfg.keep_best_probe:
                info = {"step": step, "score": mean, "sets": scores}
                files = {BEST_PROBE_FILE: json.dumps(info, indent=2) + "\n"}
                run.save_model(self.model, BEST_PROBE, files=files)

    def scores(self) -> dict[str, dict]:
        """Every set's scores with the current weights (eval mode, no gradients), the model's
        mode and the random number generators restored after."""
        device = model_device(self.model)
        python_rng, was_training = random.getstate(), self.model.training
        options = dict(layers=self.cfg.probe_layers, pooling=self.cfg.probe_pooling,
                       batch_size=self.cfg.probe_batch_size,
                       on_bad_file=self.cfg.on_bad_file)  # fmt: skip
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                with torch.no_grad():
                    self.model.eval()
                    return {s.name: self._scores(s, options) for s in self.sets}
        finally:
            self.model.train(was_training)
            random.setstate(python_rng)

    def _scores(self, probe_set: ProbeSet, options: dict) -> dict:
        try:
            return probe_scores(self.model, probe_set.train, probe_set.test, **options)
        except AudioError as err:
            raise TrainingError(
                f"online probe {probe_set.name}: cannot embed {err} (--on-bad-file skip leaves "
                "bad files out)"
            ) from None

    def state_dict(self) -> dict:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state: dict) -> None:
        self.best_score = float(state.get("best_score", -math.inf))
        self.best_step = int(state.get("best_step", -1))

    def summary(self, seconds: float) -> dict:
        """The time spent probing (in this session) and its share of the run's wall time; the
        best probe score and its step."""
        found = self.best_step >= 0
        return {
            "probe_seconds": round(self.seconds, 1),
            "probe_fraction": round(self.seconds / max(seconds, 1e-9), 4),
            "best_probe_score": self.best_score if found else None,
            "best_probe_step": self.best_step if found else None,
        }


__all__ = [
    "BEST_PROBE",
    "BEST_PROBE_FILE",
    "OBJECTIVES",
    "PROBE_HOLDOUT",
    "MaskedPatchObjective",
    "OnlineProbe",
    "PretrainConfig",
    "PretrainTask",
    "ProbeSet",
    "TeacherTask",
    "build_model",
    "clip_masks",
    "default_mask_patch",
    "online_probe",
    "pretrain",
    "pretrain_task",
    "read_probe_sets",
]

"""The training loop, :func:`fit`: set-up, resume, the epoch loop of named steps, finish.

One loop serves every task (:class:`~ssamba.training.task.Task`): distributed set-up
(torchrun + DDP: gloo on CPU, NCCL on GPU), deterministic data order per (seed, epoch, rank),
gradient accumulation and clipping, mixed precision (bf16 autocast; fp16 autocast with dynamic
loss scaling), the learning-rate schedule, atomic checkpoints and exact ``--resume``, NaN guards,
metrics as JSON lines and a progress bar.

On CUDA: fused AdamW, pinned host memory with non-blocking copies, NCCL, and DDP that looks for
unused parameters only when the task says some are (:attr:`Task.unused_parameters`).
"""

from __future__ import annotations

import logging
import math
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ssamba.configs import TrainConfig
from ssamba.errors import TrainingError
from ssamba.ops import resolve_backend
from ssamba.training.distributed import Distributed
from ssamba.training.loaders import TrainLoader, eval_loader, to_device, train_order
from ssamba.training.run_folder import RunFolder
from ssamba.training.state import (
    Progress,
    restore_trainer_state,
    seed_everything,
    trainer_state,
)
from ssamba.training.task import StepCallback, Task

log = logging.getLogger(__name__)


def fit(
    task: Task,
    cfg: TrainConfig,
    dist: Distributed,
    train_set,
    valid_set=None,
    callback: StepCallback | None = None,
) -> dict:
    """Train ``task`` on ``train_set``, evaluating on ``valid_set``; returns the summary (also
    written to ``summary.json``). Every rank calls it; the main rank writes the files.
    ``callback``: work between steps (:class:`~ssamba.training.task.StepCallback`)."""
    callback = callback or StepCallback()
    run = open_run(task, cfg, dist)
    seed_everything(cfg.seed + dist.rank)
    model = task.model.to(dist.device)
    optimizer = make_optimizer(task, cfg, dist.device)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.precision == "fp16")
    progress = Progress()
    if cfg.resume:
        progress = resume(run, task, optimizer, dist, scaler, callback)
    module = distribute(task.module.to(dist.device), dist, task.unused_parameters)
    plan = plan_steps(cfg, dist, train_set, task.sampling())
    if progress.step == 0:  # a resumed run keeps the warm-up it started with (trainer state)
        fit_warmup(task.schedule, plan.max_steps, dist.is_main)
    meter = Meter(cfg, plan.max_steps, progress.step, dist.is_main)
    metrics: dict[str, float] = {}
    loader = TrainLoader(
        train_set, plan.sampler, plan.per_rank, cfg.workers, cfg.seed, dist.device.type == "cuda"
    )
    if progress.step == 0:
        if getattr(task, "evaluate_first", False):  # a head that starts trained (LP-FT)
            maybe_evaluate(task, valid_set, cfg, dist, run, progress, plan)
        callback.after_step(0, plan, dist, run)  # the initial weights
    while progress.step < plan.max_steps:
        batches = loader.epoch(progress.epoch, progress.batch_in_epoch * cfg.accum_steps)
        while progress.step < plan.max_steps:
            metrics = train_step(
                task, module, optimizer, scaler, batches, cfg, dist, progress, meter, run
            )
            if meter.budget_spent(dist):
                plan.max_steps = progress.step  # the time budget is spent: finish this step
            log_step(run, meter, progress, optimizer, metrics, plan.max_steps)
            end_of_epoch = progress.batch_in_epoch == plan.steps_per_epoch
            maybe_evaluate(task, valid_set, cfg, dist, run, progress, plan)
            callback.after_step(progress.step, plan, dist, run)
            if end_of_epoch:
                task.schedule.end_epoch(progress.epoch)
                progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
            maybe_save(
                run, task, optimizer, scaler, progress, plan, dist, cfg.keep, end_of_epoch, callback
            )
            if end_of_epoch:
                break  # a new loader for the next epoch's order
    return finish(run, model, progress, meter, metrics, dist, callback, _sign(task))


# ---------------------------------------------------------------------------- set-up
def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def source_commit() -> str | None:
    """The git commit of ssamba's own source when it runs from a checkout (``+dirty`` when its
    files differ from it); None when installed from a wheel, or git is missing."""
    package = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", *args], cwd=package, capture_output=True, text=True, timeout=10, check=False
        )

    try:  # the package's files must be tracked: a wheel inside someone's repository is not ours
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def provenance(dist: Distributed) -> dict:
    """What run.json records about the software and hardware (recorded only: a replay or a
    resume elsewhere ignores them)."""
    device = dist.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "version": _package_version("ssamba"),
        "git": source_commit(),
        "torch": torch.__version__,
        "numba": _package_version("numba"),
        "triton": _package_version("triton"),
        "devices": f"{dist.world_size} x {name}",
    }


def open_run(task: Task, cfg: TrainConfig, dist: Distributed) -> RunFolder:
    """Check the output folder on every rank, then (main rank) create it and write run.json."""
    settings = {"command": task.command, **task.settings(), "world_size": dist.world_size}
    settings.update(provenance(dist))  # "precision" is a setting: already there
    if task.model.config.arch == "ssamba":  # which selective-scan kernel this run uses
        settings["scan_backend"] = resolve_backend(dist.device)
    run = RunFolder(cfg.out, settings, cfg.resume, cfg.overwrite, dist.is_main, task.extra_files())
    dist.barrier()  # every rank has checked the folder before rank 0 changes it
    if dist.is_main:
        run.start()
    dist.barrier()
    return run


def make_optimizer(task: Task, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The task's optimiser; AdamW on CUDA is the fused kernel (one launch for all parameters)."""
    options = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if device.type == "cuda" and task.optimizer_class is torch.optim.AdamW:
        options["fused"] = True
    optimizer = task.optimizer_class(task.param_groups(), **options)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]  # what the schedule scales
    return optimizer


def resume(
    run: RunFolder, task: Task, optimizer, dist: Distributed, scaler, callback: StepCallback
) -> Progress:
    """Continue from the run's newest intact checkpoint (weights, optimiser, schedule, data
    position, RNG states, the fp16 loss scale, the task's own state, e.g. an EMA teacher, and
    the callback's); from scratch, with no metrics kept, when it has none yet."""
    found = run.resume_checkpoint(task.model)
    if found is None:
        if dist.is_main:
            run.truncate_metrics(None)  # what a run killed before its first checkpoint logged
            log.info("--resume: no checkpoint in %s yet, starting from scratch", run.path)
        return Progress()
    ckpt, state = found
    progress = restore_trainer_state(state, optimizer, task.schedule, dist)
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    task.load_state_dict(state.get("task", {}))
    callback.load_state_dict(state.get("callback", {}))
    if dist.is_main:
        run.truncate_metrics(progress.step)
        log.info("resumed from %s (step %d)", ckpt, progress.step)
    return progress


def distribute(module: torch.nn.Module, dist: Distributed, unused: bool) -> torch.nn.Module:
    """DDP across ranks. Searching the graph for parameters without gradients costs a traversal
    every step, so only a task that leaves some unused (one pretraining head) asks for it."""
    if not dist.enabled:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module,
        device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
        find_unused_parameters=unused,
    )


@dataclass
class StepPlan:
    """How the data and the config divide the run into steps."""

    sampler: object  # an EpochSampler, or a ShardStream for a training set read from shards
    per_rank: int  # clips per rank and micro-step
    steps_per_epoch: int
    max_steps: int
    eval_every: int
    save_every: int


WARMUP_SHARE = 0.1  # a warm-up longer than the run is scaled to this share of it


def fit_warmup(schedule, max_steps: int, main: bool = True) -> None:
    """A warm-up longer than the run would never reach the learning rate (1000 steps of warm-up
    in a 6-step run peak at 0.6% of it): scale it to :data:`WARMUP_SHARE` of the run (at least
    one step), with one line saying so. A warm-up that fits the run is kept as asked."""
    asked = schedule.warmup_steps
    if not asked or asked <= max_steps:
        return
    schedule.warmup_steps = max(1, round(WARMUP_SHARE * max_steps))
    if main:
        log.warning(
            "note: the warm-up (--warmup-steps %d) is longer than this run (%d steps): warming "
            "up over %d step(s) instead (%d%% of the run; pass --warmup-steps N <= %d to choose)",
            asked, max_steps, schedule.warmup_steps, round(100 * WARMUP_SHARE), max_steps,
        )  # fmt: skip


def plan_steps(cfg: TrainConfig, dist: Distributed, train_set, sampling: dict) -> StepPlan:
    per_rank = cfg.batch_size // dist.world_size
    if per_rank * dist.world_size != cfg.batch_size:
        raise TrainingError(
            f"batch size {cfg.batch_size} is not divisible by {dist.world_size} ranks"
        )
    sampler = train_order(train_set, cfg.seed, dist, sampling, per_rank)
    steps_per_epoch = len(sampler) // (per_rank * cfg.accum_steps)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{len(train_set)} training clips give no full step of batch {cfg.batch_size} x "
            f"{cfg.accum_steps} accumulation: lower --batch-size"
        )
    return StepPlan(
        sampler,
        per_rank,
        steps_per_epoch,
        max_steps=cfg.max_steps or cfg.epochs * steps_per_epoch,
        eval_every=cfg.eval_every or steps_per_epoch,
        save_every=cfg.save_every or steps_per_epoch,
    )


# ---------------------------------------------------------------------------- one step
def train_step(
    task: Task, module, optimizer, scaler, batches, cfg, dist, progress: Progress, meter, run
) -> dict[str, float]:
    """One optimiser step: ``accum_steps`` micro-batches forward and backward, then the update.
    Returns the step's metrics averaged over micro-batches and ranks.

    With fp16 the loss is scaled before backward; the scaler unscales the gradients before
    clipping and skips the update (lowering the scale) when they overflowed."""
    module.train()
    task.schedule.apply(optimizer, progress.step)
    sums = accumulate_gradients(task, module, batches, cfg, dist, progress.step, meter, scaler)
    if not dist.all_true(all(math.isfinite(v) for v in sums.values())):
        raise TrainingError(
            f"the loss became NaN/inf at step {progress.step} ({sums}); the last good "
            f"checkpoint is {run.latest_checkpoint() or 'none yet'}. Try a lower --lr, "
            "--grad-clip, or fp32."
        )
    if cfg.grad_clip:  # every trained parameter: a task's own (a decoder) beside the model's
        scaler.unscale_(optimizer)
        trained = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
    scaler.step(optimizer)  # a plain optimizer.step() when the scaler is disabled
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    task.after_update(progress.step)  # e.g. the EMA teacher follows the updated weights
    progress.step += 1
    progress.batch_in_epoch += 1
    return dist.mean(sums)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def accumulate_gradients(task: Task, module, batches, cfg, dist, step: int, meter, scaler):
    """Forward and backward ``accum_steps`` micro-batches; the mean of their metrics."""
    dtype = AUTOCAST_DTYPES.get(cfg.precision)
    autocast = torch.autocast(dist.device.type, dtype=dtype, enabled=dtype is not None)
    sums: dict[str, float] = {}
    for micro in range(cfg.accum_steps):
        batch = to_device(next(batches), dist.device)
        if "skipped" in batch:
            meter.skipped_files += int(batch.pop("skipped").sum())
        sync = micro == cfg.accum_steps - 1 or not dist.enabled
        with _maybe_no_sync(module, sync):  # gradients are all-reduced on the last micro-step
            with autocast:
                loss, parts = task.compute_loss(module, batch, (cfg.seed, step, micro))
            scaler.scale(loss / cfg.accum_steps).backward()
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) / cfg.accum_steps
    return sums


class _maybe_no_sync:
    """DDP's no_sync() for accumulation micro-steps; nothing for a plain module."""

    def __init__(self, module, sync: bool):
        self.ctx = None if sync or not hasattr(module, "no_sync") else module.no_sync()

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx else False


# ---------------------------------------------------------------------------- after a step
def log_step(run: RunFolder, meter, progress: Progress, optimizer, metrics, max_steps) -> None:
    """A metrics line every ``log_every`` steps and at the end; the progress bar every step."""
    if run.main and (progress.step % meter.log_every == 0 or progress.step == max_steps):
        record = {
            "kind": "train",
            "step": progress.step,
            "epoch": progress.epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "clips_per_s": round(meter.clips_per_s(progress.step), 2),
            **metrics,
        }
        run.log_metrics(record)
    meter.show(metrics)


def _due(step: int, every: int, max_steps: int) -> bool:
    return step % every == 0 or step == max_steps


def _sign(task: Task) -> int:
    """+1 where a higher ``watch`` is better, -1 where lower is (a validation loss)."""
    return 1 if getattr(task, "watch_higher", True) else -1


def maybe_evaluate(task: Task, valid_set, cfg, dist, run: RunFolder, progress, plan) -> None:
    """Every ``eval_every`` steps and at the end: evaluate, feed the schedule, keep best/."""
    if valid_set is None or not _due(progress.step, plan.eval_every, plan.max_steps):
        return
    loader = eval_loader(valid_set, dist, cfg.batch_size // dist.world_size, cfg.workers)
    # evaluation runs in fp32 whatever the training precision: metrics comparable across runs
    result = task.evaluate(loader, dist)  # already reduced over ranks
    watched = _sign(task) * result[task.watch]  # higher is better from here on
    task.schedule.observe(watched)
    if watched > progress.best_metric:
        progress.best_metric, progress.best_step = watched, progress.step
        if dist.is_main:
            run.save_model(task.model, "best")
    run.log_metrics({"kind": "valid", "step": progress.step, "epoch": progress.epoch, **result})
    if dist.is_main:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items())
        log.info("step %d validation: %s", progress.step, shown)


def maybe_save(
    run, task: Task, optimizer, scaler, progress, plan, dist, keep, end_of_epoch, callback
):
    """A checkpoint every ``save_every`` steps, at every epoch's end and at the end."""
    if not (end_of_epoch or _due(progress.step, plan.save_every, plan.max_steps)):
        return
    state = trainer_state(optimizer, task.schedule, progress, dist)
    if dist.is_main:
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        state["callback"] = callback.state_dict()
        state["task"] = task.state_dict()
        run.save_checkpoint(task.model, state, progress.step, keep)
    dist.barrier()


# ---------------------------------------------------------------------------- finish
def finish(
    run: RunFolder, model, progress: Progress, meter, metrics, dist, callback, sign: int = 1
) -> dict:
    """Save final/ and summary.json; the summary (``best_metric`` as evaluated: ``sign`` undoes
    the flip of a lower-is-better metric)."""
    meter.close()
    elapsed = meter.elapsed()
    summary = {
        "steps": progress.step,
        "epochs": progress.epoch,
        "seconds": round(elapsed, 1),
        "skipped_files": meter.skipped_files,
        "last_train": metrics,
        "best_metric": None if progress.best_step < 0 else sign * progress.best_metric,
        "best_step": None if progress.best_step < 0 else progress.best_step,
        **callback.summary(elapsed),
    }
    if dist.is_main:
        run.save_model(model, "final")
        run.write_summary(summary)
        run.close()
        if meter.skipped_files:
            log.warning(
                "%d bad audio files were skipped (see the warnings above)", meter.skipped_files
            )
    dist.barrier()
    return summary


# ---------------------------------------------------------------------------- time and display
class Meter:
    """Wall time, the time budget, throughput, skipped files and the progress bar of a run."""

    def __init__(self, cfg: TrainConfig, total: int, initial: int, main: bool):
        self.bar = progress_bar(total, initial, cfg.progress and main, cfg.max_minutes)
        self.max_minutes, self.log_every = cfg.max_minutes, cfg.log_every
        self.clips_per_step = cfg.batch_size * cfg.accum_steps
        self.started = self.last_time = time.time()
        self.last_step = initial
        self.skipped_files = 0

    def elapsed(self) -> float:
        return time.time() - self.started

    def budget_spent(self, dist: Distributed) -> bool:
        """Whether the time budget is spent (a collective: the ranks agree)."""
        if self.max_minutes is None:
            return False
        return dist.all_true(self.elapsed() >= 60 * self.max_minutes)

    def clips_per_s(self, step: int) -> float:
        """Throughput since the previous call."""
        now = time.time()
        rate = (step - self.last_step) * self.clips_per_step / max(now - self.last_time, 1e-9)
        self.last_time, self.last_step = now, step
        return rate

    def show(self, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_bar(total: int, initial: int, enabled: bool, minutes: float | None = None):
    """A step bar; under a time budget the step total is only an upper bound (often a huge one,
    with an ETA of hours), so the bar counts steps and names the budget instead."""
    if not enabled:
        return None
    if minutes is not None:
        desc = f"{minutes:g} min budget"
        return tqdm(initial=initial, unit="step", desc=desc, dynamic_ncols=True)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def configure_logging(main: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )

"""One training loop for pretraining and fine-tuning, readable top to bottom (:func:`fit`).

What a task (pretraining, fine-tuning) supplies is small: the module to optimise, the loss of a
batch, an evaluation, and the optimiser's parameter groups. Everything else lives here:
distributed set-up (torchrun + DDP: gloo on CPU, NCCL on GPU), deterministic data order per
(seed, epoch, rank), gradient accumulation and clipping, bf16 autocast, learning-rate warm-up and
plateau halving or step decay, atomic checkpoints and exact ``--resume``, NaN guards, metrics as
JSON lines (+ TensorBoard when installed) and a progress bar.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader, Sampler

from ssamba.errors import TrainingError

log = logging.getLogger(__name__)

CHECKPOINTS, LATEST, METRICS, RUN_FILE = "checkpoints", "latest", "metrics.jsonl", "run.json"
TRAINER_STATE = "trainer_state.pt"
# Settings that may change when a run is resumed (they do not alter what was computed so far).
RESUMABLE_CHANGES = {
    "resume",
    "max_steps",
    "max_minutes",
    "epochs",
    "eval_every",
    "save_every",
    "keep",
    "num_workers",
    "progress",
    "log_every",
}


# ---------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Settings shared by every training job (the tasks add their own)."""

    out: str
    batch_size: int = 64  # global: split across ranks, times accumulation steps
    accum_steps: int = 1
    lr: float = 1e-4
    weight_decay: float = 5e-8
    betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 1000
    max_steps: int | None = None  # None: run ``epochs`` epochs
    max_minutes: float | None = None  # also stop (and save) once this much time has passed
    epochs: int = 1
    grad_clip: float | None = None
    precision: str = "fp32"  # or "bf16" (autocast)
    seed: int = 0
    eval_every: int = 0  # steps; 0: at the end of every epoch
    save_every: int = 0  # steps; 0: at the end of every epoch
    keep: int = 2  # checkpoints kept besides best/ and final/
    log_every: int = 10  # steps between metric lines
    num_workers: int = 0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.batch_size < 1 or self.accum_steps < 1:
            raise ValueError("batch_size and accum_steps must be >= 1")

    def to_dict(self) -> dict:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


# ---------------------------------------------------------------------------- distributed
@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str | None = None) -> Distributed:
        """Join the process group torchrun describes (if any) and pick this rank's device."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local if dev.index is None else dev.index)
            torch.cuda.set_device(dev)
        if world > 1 and not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, world, local, dev)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (every rank gets the result)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        torch_dist.all_reduce(t)
        return {k: v / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def weighted_mean(self, totals: dict[str, float], count: int) -> dict[str, float]:
        """sum(totals) / sum(count) over ranks: exact means of sharded evaluations."""
        keys = sorted(totals)
        t = torch.tensor([float(totals[k]) for k in keys] + [float(count)], dtype=torch.float64)
        if self.enabled:
            torch_dist.all_reduce(t)
        return {k: v / max(t[-1].item(), 1.0) for k, v in zip(keys, t[:-1].tolist(), strict=True)}

    def all_true(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0])
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
        return bool(t.item())

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()


# ---------------------------------------------------------------------------- schedule
class LRSchedule:
    """Linear warm-up, then a multiplier that plateau halving or step decay lowers.

    ``plateau``: multiply by ``factor`` when the watched metric has not improved for ``patience``
    evaluations (the reference's ReduceLROnPlateau on validation accuracy). ``step_decay``:
    multiply by ``factor`` at every epoch from ``decay_start`` on (the fine-tuning recipes).
    """

    def __init__(self, warmup_steps=0, mode="plateau", factor=0.5, patience=2, decay_start=0):
        self.warmup_steps, self.mode, self.factor = warmup_steps, mode, factor
        self.patience, self.decay_start = patience, decay_start
        self.scale, self.best, self.bad_rounds = 1.0, -math.inf, 0

    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.scale

    def apply(self, optimizer, step: int) -> None:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.lr_factor(step)

    def observe(self, metric: float) -> None:
        """An evaluation result (higher is better) for plateau halving."""
        if self.mode != "plateau":
            return
        if metric > self.best:
            self.best, self.bad_rounds = metric, 0
        else:
            self.bad_rounds += 1
            if self.bad_rounds >= self.patience:
                self.scale *= self.factor
                self.bad_rounds = 0
                log.info("validation metric stalled: learning rate x%s", self.factor)

    def end_epoch(self, epoch: int) -> None:
        """Called after epoch ``epoch`` (0-based) finished."""
        if self.mode == "step_decay" and epoch + 1 >= self.decay_start:
            self.scale *= self.factor

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_rounds": self.bad_rounds}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_rounds = state["scale"], state["best"], state["bad_rounds"]


# ---------------------------------------------------------------------------- run folder
@dataclass
class Progress:
    """Where the run is: what a checkpoint must hold to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # optimizer steps already taken in this epoch
    best_metric: float = -math.inf
    best_step: int = -1


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class RunFolder:
    """The output folder: run.json, metrics.jsonl, checkpoints/step_N, latest, best/, final/."""

    def __init__(self, out: str | Path, settings: dict, resume: bool, overwrite: bool, main: bool):
        """Check the folder against the request; changes nothing (see :meth:`start`).

        Every rank checks before rank 0 writes (a barrier between them), so all ranks see the
        same folder and agree on the verdict."""
        self.path = Path(out)
        self.main = main
        self.settings, self.replace = settings, False
        run_file = self.path / RUN_FILE
        if run_file.exists() and not resume:
            if not overwrite:
                raise TrainingError(
                    f"{self.path} already holds a run: pass --resume to continue it or "
                    "--overwrite to replace it"
                )
            self.replace = True
        if resume and run_file.exists():
            saved = json.loads(run_file.read_text())
            changed = sorted(
                k
                for k in set(saved) | set(settings)
                if k not in RESUMABLE_CHANGES and saved.get(k) != settings.get(k)
            )
            if changed:
                details = ", ".join(
                    f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed
                )
                raise TrainingError(f"{self.path}: --resume with different settings ({details})")
        self.tb = None
        self.extra_files: dict[str, str] = {}  # written into every saved model folder

    def start(self) -> None:
        """(Main rank) clear a replaced run, create the folder and write run.json."""
        if self.replace:
            for name in (CHECKPOINTS, "best", "final", "tb", METRICS, LATEST, RUN_FILE):
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path / RUN_FILE, json.dumps(self.settings, indent=2, default=str))

    def _write_extra(self, folder: Path) -> None:
        for name, text in self.extra_files.items():
            (folder / name).write_text(text)

    def latest_checkpoint(self) -> Path | None:
        pointer = self.path / LATEST
        if not pointer.exists():
            return None
        target = self.path / pointer.read_text().strip()
        return target if (target / TRAINER_STATE).exists() else None

    def save_checkpoint(self, model, trainer_state: dict, step: int, keep: int) -> Path:
        """Write checkpoints/step_N atomically (temp folder + rename), then move ``latest``."""
        final = self.path / CHECKPOINTS / f"step_{step:08d}"
        tmp = Path(tempfile.mkdtemp(dir=self.path / CHECKPOINTS, prefix=".tmp_step_"))
        model.save_pretrained(tmp)
        self._write_extra(tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(self.path / LATEST, f"{CHECKPOINTS}/{final.name}\n")
        old = sorted(p for p in (self.path / CHECKPOINTS).glob("step_*") if p != final)
        for stale in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def save_model(self, model, name: str) -> Path:
        """A complete model folder (best/, final/), replaced atomically."""
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=f".tmp_{name}_"))
        model.save_pretrained(tmp)
        self._write_extra(tmp)
        target = self.path / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        return target

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after ``step`` (by a run killed after its last checkpoint)."""
        path = self.path / METRICS
        if not path.exists():
            return
        keep = [ln for ln in path.read_text().splitlines() if json.loads(ln).get("step", 0) <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    def log_metrics(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.path / "tb"))
            except Exception:  # tensorboard is an optional dependency
                self.tb = False
        if self.tb:
            for key, value in record.items():
                if key not in ("step", "epoch", "kind") and isinstance(value, int | float):
                    self.tb.add_scalar(
                        f"{record.get('kind', 'train')}/{key}", value, record["step"]
                    )


# ---------------------------------------------------------------------------- data order
class ResumableSampler(Sampler[int]):
    """This rank's indices of an epoch from position ``start`` on (to resume mid-epoch)."""

    def __init__(self, sampler, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self):
        return iter(list(self.sampler)[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


def epoch_loader(dataset, sampler, batch_size, start_batch, num_workers, seed, epoch):
    """A loader over one epoch's shard, skipping ``start_batch`` batches already consumed."""
    from ssamba.data import set_epoch

    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch)
    # A dedicated generator: the loader's worker seeds must not consume the global torch RNG.
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableSampler(sampler, start_batch * batch_size),
        num_workers=num_workers,
        drop_last=True,
        generator=gen,
    )
    set_epoch(loader, epoch)
    return loader


# ---------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- the loop
def fit(task, cfg: TrainConfig, dist: Distributed, train_set, valid_set=None) -> dict:
    """Train ``task.module`` on ``train_set``; returns the final summary (also in summary.json).

    ``task`` provides: ``module`` (an nn.Module whose forward(batch, step_seed) returns
    (loss, metrics)), ``model`` (the AudioModel inside, to save), ``param_groups()``,
    ``schedule`` (an :class:`LRSchedule`), ``evaluate(loader) -> metrics`` with a
    ``task.watch`` metric (higher is better) and ``settings()`` for run.json.
    """
    from ssamba.data import make_sampler

    settings = {**cfg.to_dict(), **task.settings(), "world_size": dist.world_size}
    run = RunFolder(cfg.out, settings, cfg.resume, cfg.overwrite, dist.is_main)
    run.extra_files = getattr(task, "extra_files", {})
    dist.barrier()  # every rank has checked the folder before rank 0 changes it
    if dist.is_main:
        run.start()
    dist.barrier()
    seed_everything(cfg.seed + dist.rank)
    model = task.model.to(dist.device)
    optimizer_class = getattr(task, "optimizer_class", torch.optim.AdamW)
    optimizer = optimizer_class(
        task.param_groups(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    schedule: LRSchedule = task.schedule
    progress = Progress()

    if cfg.resume and (ckpt := run.latest_checkpoint()) is not None:
        from ssamba.checkpoints import load_pretrained

        state = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True)
        model.load_state_dict(load_pretrained(ckpt).state_dict())
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        progress = Progress(**state["progress"])
        set_rng_state(state["rng"][dist.rank] if dist.rank < len(state["rng"]) else state["rng"][0])
        if dist.is_main:
            run.truncate_metrics(progress.step)
            log.info("resumed from %s (step %d)", ckpt, progress.step)
    elif cfg.resume and dist.is_main:
        log.info("--resume: no checkpoint in %s yet, starting from scratch", cfg.out)

    module = task.module.to(dist.device)
    if dist.enabled:
        module = torch.nn.parallel.DistributedDataParallel(
            module,
            device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
            find_unused_parameters=True,  # each pretraining pass uses one of the two heads
        )
    per_rank = cfg.batch_size // dist.world_size
    if per_rank * dist.world_size != cfg.batch_size:
        raise TrainingError(
            f"batch size {cfg.batch_size} is not divisible by {dist.world_size} ranks"
        )
    sampler = make_sampler(train_set, cfg.seed, 0, dist.rank, dist.world_size, **task.sampling())
    steps_per_epoch = len(sampler) // (per_rank * cfg.accum_steps)
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{len(train_set)} training clips give no full step of batch {cfg.batch_size} x "
            f"{cfg.accum_steps} accumulation: lower --batch-size"
        )
    max_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    eval_every = cfg.eval_every or steps_per_epoch
    save_every = cfg.save_every or steps_per_epoch
    autocast = torch.autocast(
        dist.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"
    )

    bar = _progress_bar(max_steps, progress.step, cfg.progress and dist.is_main, cfg.max_minutes)
    clips_per_step = cfg.batch_size * cfg.accum_steps
    started, last_time, last_step = time.time(), time.time(), progress.step
    skipped_files = 0
    metrics: dict[str, float] = {}
    while progress.step < max_steps:
        loader = epoch_loader(
            train_set,
            sampler,
            per_rank,
            progress.batch_in_epoch * cfg.accum_steps,
            cfg.num_workers,
            cfg.seed,
            progress.epoch,
        )
        batches = iter(loader)
        while progress.step < max_steps:
            module.train()
            schedule.apply(optimizer, progress.step)
            sums: dict[str, float] = {}
            for micro in range(cfg.accum_steps):
                batch = _to_device(next(batches), dist.device)
                skipped_files += int(batch.pop("skipped").sum()) if "skipped" in batch else 0
                step_seed = (cfg.seed, progress.step, micro)
                sync = micro == cfg.accum_steps - 1 or not dist.enabled
                with _maybe_no_sync(module, sync), autocast:
                    loss, parts = task.train_step(module, batch, step_seed, dist, cfg.accum_steps)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / cfg.accum_steps
            finite = dist.all_true(all(math.isfinite(v) for v in sums.values()))
            if not finite:
                raise TrainingError(
                    f"the loss became NaN/inf at step {progress.step} ({sums}); the last good "
                    f"checkpoint is {run.latest_checkpoint() or 'none yet'}. Try a lower --lr, "
                    "--grad-clip, or fp32."
                )
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.batch_in_epoch += 1
            metrics = dist.mean(sums)
            if cfg.max_minutes is not None and dist.all_true(
                time.time() - started >= 60 * cfg.max_minutes
            ):
                max_steps = progress.step  # the time budget is spent: finish this step cleanly

            now = time.time()
            if dist.is_main and (progress.step % cfg.log_every == 0 or progress.step == max_steps):
                rate = (progress.step - last_step) * clips_per_step / max(now - last_time, 1e-9)
                last_time, last_step = now, progress.step
                run.log_metrics(
                    {
                        "kind": "train",
                        "step": progress.step,
                        "epoch": progress.epoch,
                        "lr": optimizer.param_groups[0]["lr"],
                        "clips_per_s": round(rate, 2),
                        **metrics,
                    }
                )
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()}, refresh=False)

            end_of_epoch = progress.batch_in_epoch == steps_per_epoch
            if valid_set is not None and (
                progress.step % eval_every == 0 or progress.step == max_steps
            ):
                _evaluate(task, valid_set, cfg, dist, run, progress, schedule, model)
            if end_of_epoch:
                schedule.end_epoch(progress.epoch)
                progress.epoch += 1
                progress.batch_in_epoch = 0
            if progress.step % save_every == 0 or progress.step == max_steps or end_of_epoch:
                _checkpoint(run, model, optimizer, schedule, progress, dist, cfg.keep)
            if end_of_epoch:
                break  # a new loader for the next epoch's order

    if bar is not None:
        bar.close()
    summary = {
        "steps": progress.step,
        "epochs": progress.epoch,
        "seconds": round(time.time() - started, 1),
        "skipped_files": skipped_files,
        "last_train": metrics,
        "best_metric": None if progress.best_step < 0 else progress.best_metric,
        "best_step": None if progress.best_step < 0 else progress.best_step,
    }
    if dist.is_main:
        run.save_model(model, "final")
        atomic_write_text(run.path / "summary.json", json.dumps(summary, indent=2))
        if skipped_files:
            log.warning("%d bad audio files were skipped (see the warnings above)", skipped_files)
    dist.barrier()
    return summary


def _evaluate(task, valid_set, cfg, dist, run, progress, schedule, model) -> dict:
    result = task.evaluate(valid_set, dist, cfg)  # already reduced over ranks
    watched = result[task.watch]
    schedule.observe(watched)
    if watched > progress.best_metric:
        progress.best_metric, progress.best_step = watched, progress.step
        if dist.is_main:
            run.save_model(model, "best")
    run.log_metrics({"kind": "valid", "step": progress.step, "epoch": progress.epoch, **result})
    if dist.is_main:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items())
        log.info("step %d validation: %s", progress.step, shown)
    return result


def _checkpoint(run, model, optimizer, schedule, progress, dist, keep) -> None:
    # Every rank's RNG state is gathered so each continues exactly where it was.
    states = [rng_state()]
    if dist.enabled:
        states = [None] * dist.world_size
        torch_dist.all_gather_object(states, rng_state())
    if dist.is_main:
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "progress": dataclasses.asdict(progress),
            "rng": states,
        }
        run.save_checkpoint(model, trainer_state, progress.step, keep)
    dist.barrier()


def _to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


class _maybe_no_sync:
    """DDP's no_sync() for accumulation micro-steps; nothing for a plain module."""

    def __init__(self, module, sync: bool):
        self.ctx = None if sync or not hasattr(module, "no_sync") else module.no_sync()

    def __enter__(self):
        return self.ctx.__enter__() if self.ctx else None

    def __exit__(self, *exc):
        return self.ctx.__exit__(*exc) if self.ctx else False


def _progress_bar(total: int, initial: int, enabled: bool, minutes: float | None = None):
    """A step bar; under a time budget the step total is only an upper bound (often a huge one,
    with an ETA of hours), so the bar counts steps and names the budget instead."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    if minutes is not None:
        desc = f"{minutes:g} min budget"
        return tqdm(initial=initial, unit="step", desc=desc, dynamic_ncols=True)
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------- command line
def add_train_arguments(p, **defaults) -> None:
    """Options every training command shares (TrainConfig's fields); ``defaults`` per command.

    A default of None leaves the value to the command (a recipe, or the config's own default).
    """
    d = {"batch_size": 64, "lr": 1e-4, "weight_decay": 5e-8, "warmup_steps": 1000, "epochs": 1}
    d.update(defaults)
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="global (all ranks)")
    g.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, default=d["lr"])
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--betas", type=float, nargs=2, default=(0.95, 0.999))
    g.add_argument("--warmup-steps", type=int, default=d["warmup_steps"])
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument("--max-steps", type=int, help="stop after this many steps (overrides --epochs)")
    g.add_argument("--max-minutes", type=float, help="stop after this much training time")
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    g.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="output folder (checkpoints, metrics, models)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--eval-every", type=int, default=0, help="steps; 0: every epoch")
    g.add_argument("--save-every", type=int, default=0, help="steps; 0: every epoch")
    g.add_argument("--keep", type=int, default=2, help="checkpoints to keep")
    g.add_argument("--log-every", type=int, default=10, help="steps between metric lines")
    g.add_argument("--num-workers", type=int, default=0, help="data loading processes")
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--no-progress", dest="progress", action="store_false")


def train_config_kwargs(args) -> dict:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names}


def configure_logging(main: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if main else logging.WARNING,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )

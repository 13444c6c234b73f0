"""Training: one loop (:func:`fit`) for every task, readable top to bottom.

- :mod:`~ssamba.training.task`: the :class:`Task` protocol, the contract between the loop and a
  task (pretraining, fine-tuning, DASL);
- :mod:`~ssamba.training.loop`: :func:`fit` and its named steps;
- :mod:`~ssamba.training.distributed`: torchrun processes and collectives;
- :mod:`~ssamba.training.loaders`: the epoch loader (resumable mid-epoch), :func:`eval_loader`;
- :mod:`~ssamba.training.schedule`: :class:`LRSchedule`;
- :mod:`~ssamba.training.state`: what a checkpoint holds to continue exactly;
- :mod:`~ssamba.training.run_folder`: the output folder (run.json, metrics, checkpoints).

The settings (:class:`TrainConfig` and the tasks' configs) live in :mod:`ssamba.configs`, which
imports no torch. docs/training.md describes a run's output folder.
"""

from ssamba.configs import TrainConfig
from ssamba.errors import TrainingError
from ssamba.training.distributed import Distributed, ends_process_group
from ssamba.training.loaders import ResumableSampler, epoch_loader, eval_loader, to_device
from ssamba.training.loop import configure_logging, fit, progress_bar
from ssamba.training.run_folder import (
    CHECKPOINTS,
    LATEST,
    METRICS,
    RESUMABLE_CHANGES,
    RUN_FILE,
    SUMMARY_FILE,
    TRAINER_STATE,
    RunFolder,
    chosen_model,
    load_chosen_model,
    read_metrics,
)
from ssamba.training.schedule import LRSchedule
from ssamba.training.state import Progress, rng_state, seed_everything, set_rng_state
from ssamba.training.task import StepCallback, Task

__all__ = [
    "CHECKPOINTS",
    "LATEST",
    "METRICS",
    "RESUMABLE_CHANGES",
    "RUN_FILE",
    "SUMMARY_FILE",
    "TRAINER_STATE",
    "Distributed",
    "ends_process_group",
    "LRSchedule",
    "Progress",
    "ResumableSampler",
    "RunFolder",
    "StepCallback",
    "Task",
    "TrainConfig",
    "TrainingError",
    "chosen_model",
    "configure_logging",
    "epoch_loader",
    "eval_loader",
    "fit",
    "load_chosen_model",
    "progress_bar",
    "read_metrics",
    "rng_state",
    "seed_everything",
    "set_rng_state",
    "to_device",
]

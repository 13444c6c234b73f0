"""What a checkpoint must hold for a run to continue exactly: the position in the data, the
optimiser and schedule, and every rank's random number generators."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass

import torch

from ssamba.training.distributed import Distributed
from ssamba.training.schedule import LRSchedule


@dataclass
class Progress:
    """Where the run is."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # optimizer steps already taken in this epoch
    best_metric: float = -math.inf
    best_step: int = -1


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def trainer_state(optimizer, schedule: LRSchedule, progress: Progress, dist: Distributed):
    """The trainer state to save (on the main rank; None on the others).

    A collective: every rank's RNG state is gathered so each continues exactly where it was."""
    states = dist.gather(rng_state())
    if not dist.is_main:
        return None
    return {
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "progress": dataclasses.asdict(progress),
        "rng": states,
    }


def restore_trainer_state(state: dict, optimizer, schedule: LRSchedule, dist: Distributed):
    """Load a saved trainer state; returns the saved :class:`Progress`."""
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    rngs = state["rng"]
    set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    return Progress(**state["progress"])

"""The learning-rate schedule: warm-up, then plateau halving or step decay."""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


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

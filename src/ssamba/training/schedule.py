"""The learning-rate schedule: warm-up, then plateau halving, step decay or milestone decay."""

from __future__ import annotations

import logging
import math

log = logging.getLogger(__name__)


MODES = ("plateau", "step_decay", "milestones")


class LRSchedule:
    """Linear warm-up, then a multiplier that plateau halving, step or milestone decay lowers.

    ``plateau``: torch's ``ReduceLROnPlateau(mode="max", threshold=1e-4, threshold_mode="rel",
    cooldown=0)``, as the official loop uses it on validation accuracy: a metric is an
    improvement only above ``best * (1 + threshold)``, and the multiplier is multiplied by
    ``factor`` once MORE than ``patience`` evaluations in a row brought none (the third, for
    patience 2). ``step_decay``: multiply by ``factor`` after every epoch from ``decay_start``
    on (1-based: ``decay_start=15`` first lowers the rate for epoch 16). ``milestones``: torch's
    ``MultiStepLR``: multiply by ``factor`` after each epoch listed in ``milestones`` (1-based,
    as the official AS-20K script's 15, 25, 35, 45).
    """

    def __init__(
        self,
        warmup_steps=0,
        mode="plateau",
        factor=0.5,
        patience=2,
        decay_start=0,
        threshold=1e-4,
        milestones=(),
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.warmup_steps, self.mode, self.factor = warmup_steps, mode, factor
        self.patience, self.decay_start, self.threshold = patience, decay_start, threshold
        self.milestones = sorted(int(m) for m in milestones)
        self.scale, self.best, self.bad_rounds = 1.0, -math.inf, 0

    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.scale

    def apply(self, optimizer, step: int) -> None:
        """Every group's rate for ``step``: its ``base_lr`` times :meth:`lr_factor`, or 0 before
        its ``frozen_until`` step (a group that waits: fine-tuning's frozen encoder)."""
        for group in optimizer.param_groups:
            frozen = step < group.get("frozen_until", 0)
            group["lr"] = 0.0 if frozen else group["base_lr"] * self.lr_factor(step)

    def observe(self, metric: float) -> None:
        """An evaluation result (higher is better) for plateau halving."""
        if self.mode != "plateau":
            return
        # torch's "rel" threshold in mode "max" (for a negative best too, as torch computes it)
        if metric > self.best * (1 + self.threshold):
            self.best, self.bad_rounds = metric, 0
        else:
            self.bad_rounds += 1
            if self.bad_rounds > self.patience:
                self.scale *= self.factor
                self.bad_rounds = 0
                log.info("validation metric stalled: learning rate x%s", self.factor)

    def end_epoch(self, epoch: int) -> None:
        """Called after epoch ``epoch`` (0-based) finished."""
        if self.mode == "step_decay" and epoch + 1 >= self.decay_start:
            self.scale *= self.factor
        elif self.mode == "milestones":
            self.scale *= self.factor ** self.milestones.count(epoch + 1)

    def state_dict(self) -> dict:
        return {
            "scale": self.scale,
            "best": self.best,
            "bad_rounds": self.bad_rounds,
            "warmup_steps": self.warmup_steps,  # as the run used it (a long one scaled to the run)
        }

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_rounds = state["scale"], state["best"], state["bad_rounds"]
        self.warmup_steps = state.get("warmup_steps", self.warmup_steps)

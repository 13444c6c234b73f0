"""The contract between :func:`ssamba.training.fit` and a training task.

The loop owns everything generic (devices, data order, accumulation, the optimiser step,
evaluation timing, checkpoints); a task says what is trained and how it is scored. Pretraining
(:class:`ssamba.pretrain.PretrainTask`), fine-tuning (:class:`ssamba.finetune.FinetuneTask`) and
DASL (:class:`ssamba.dasl.DaslTask`) implement it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from ssamba.training.distributed import Distributed
from ssamba.training.schedule import LRSchedule


class Task(Protocol):
    """What :func:`~ssamba.training.fit` uses of a task: exactly the members below.

    Attributes:

    - ``command``: the command name run.json records (``"pretrain"``, ``"finetune"``, ...).
    - ``model``: the :class:`~ssamba.models.model.AudioModel` being trained. It is what
      checkpoints, ``best/`` and ``final/`` save and what ``--resume`` reloads.
    - ``module``: the ``nn.Module`` that holds ``model`` and computes the loss; the loop moves it
      to the device and wraps it in DistributedDataParallel (so its forward must run every
      collective the loss needs).
    - ``schedule``: the :class:`~ssamba.training.LRSchedule`; the loop applies it before every
      step, feeds it each validation result (:meth:`LRSchedule.observe`) and every epoch's end.
    - ``watch``: the key of :meth:`evaluate`'s result that selects ``best/`` (higher is better).
    - ``optimizer_class``: built as ``optimizer_class(param_groups(), lr=, betas=,
      weight_decay=)``; default AdamW (fused on CUDA).
    - ``unused_parameters``: True when a step leaves some of ``module``'s parameters without a
      gradient (pretraining with one objective leaves the other head unused); DDP then searches
      for them every step. Default False.
    - ``watch_higher``: False when a lower ``watch`` is better (a validation loss). Default
      True.
    - ``evaluate_first``: True to validate the initial weights too (step 0, before any update),
      so that ``best/`` can be them: a fine-tuning head that starts as a fitted probe. Default
      False.

    Optional methods have the default behaviour written in their docstrings; a task that
    subclasses ``Task`` explicitly inherits it.
    """

    command: str
    model: nn.Module
    module: nn.Module
    schedule: LRSchedule
    watch: str
    optimizer_class: ClassVar[type[torch.optim.Optimizer]] = torch.optim.AdamW
    unused_parameters: bool = False
    evaluate_first: bool = False
    watch_higher: bool = True

    def settings(self) -> dict[str, Any]:
        """The run's settings for run.json, every key a command-line option of ``command`` (so
        ``--config run.json`` replays the run); ``--resume`` refuses other settings."""
        ...

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups (a group's own ``lr`` overrides the config's)."""
        ...

    def compute_loss(
        self, module: nn.Module, batch: dict, step_seed: tuple[int, int, int]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward one micro-batch through ``module`` (maybe DDP-wrapped; under autocast).

        ``batch`` is on the device; ``step_seed`` is ``(seed, step, micro-step)`` for any
        randomness that must not depend on ranks or workers. Returns the loss to minimise (the
        loop scales it by the accumulation and calls backward) and scalar metrics to log."""
        ...

    def evaluate(self, loader: DataLoader, dist: Distributed) -> dict[str, float]:
        """Metrics on this rank's share of the validation set (``loader``, in order), reduced
        over ranks (every rank returns the same dict, which holds ``watch``). Leave the model in
        training mode."""
        ...

    def sampling(self) -> dict[str, Any]:
        """Keyword arguments for the training sampler (:func:`ssamba.data.make_sampler`), e.g.
        ``{"balanced": True}``. Default: none."""
        return {}

    def extra_files(self) -> dict[str, str]:
        """Files (name -> text) written into every saved model folder, e.g. the class list; a
        checkpoint resumed must hold the same. Default: none."""
        return {}

    def after_update(self, step: int) -> None:
        """After the optimiser update of step ``step`` (0 for the first), on every rank: work
        that follows the new weights, e.g. pretraining's EMA teacher. Default: nothing."""

    def state_dict(self) -> dict[str, Any]:
        """What the task holds besides ``model`` and the optimiser that a resumed run needs
        (e.g. the EMA teacher's weights and the decoder's), saved in every checkpoint's trainer
        state by the main rank. Default: nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` when a run is resumed (every rank). Default: nothing."""


class StepCallback:
    """Work between optimiser steps that is no part of the training itself (pretraining's online
    probe, :class:`ssamba.pretrain.OnlineProbe`): ``fit(..., callback=)``. This base class does
    nothing; a callback overrides what it needs.

    The loop calls :meth:`after_step` on every rank, so a callback that works on one rank must
    make the others wait (a collective) and must not change what training computes."""

    def after_step(self, step: int, plan: Any, dist: Distributed, run: Any) -> None:
        """After optimiser step ``step`` (its logging and evaluation done, its checkpoint not
        yet written), and with ``step`` 0 before the first step of a run that starts from
        scratch. ``plan``: the :class:`~ssamba.training.loop.StepPlan` (``max_steps``,
        ``eval_every``); ``run``: the :class:`~ssamba.training.RunFolder`."""

    def state_dict(self) -> dict[str, Any]:
        """What the callback needs to continue after ``--resume`` (saved in every checkpoint's
        trainer state by the main rank)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` when a run is resumed (every rank)."""

    def summary(self, seconds: float) -> dict[str, Any]:
        """Entries for summary.json; ``seconds``: this session's wall time so far."""
        return {}

"""Weight averaging of checkpoints (``ssamba average``): the reference's intended AudioSet trick.

The official recipe averages the weights of the epoch checkpoints from a given epoch on; its
script crashes, this does it: every tensor is the mean of the same tensor in each checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ssamba.checkpoints import load_model
from ssamba.errors import CheckpointError, UsageError
from ssamba.models.model import AudioModel

__all__ = ["average_checkpoints", "run_folder_checkpoints"]


def average_checkpoints(folders: Sequence[str | os.PathLike]) -> AudioModel:
    """A model whose weights are the mean of the given model folders' weights (same config)."""
    if not folders:
        raise UsageError("nothing to average: give at least one checkpoint")
    models = [load_model(f) for f in folders]
    first = models[0]
    for folder, model in zip(folders[1:], models[1:], strict=True):
        if model.config != first.config:
            raise CheckpointError(f"{folder}: its model config differs from {folders[0]}'s")
    states = [m.state_dict() for m in models]
    averaged = {
        k: (torch.stack([s[k].double() for s in states]).mean(0)).to(v.dtype)
        if v.is_floating_point()
        else v
        for k, v in states[0].items()
    }
    first.load_state_dict(averaged)
    return first


def run_folder_checkpoints(run: str | os.PathLike, first_step: int = 0) -> list[Path]:
    """A run's kept checkpoints (checkpoints/step_N) from ``first_step`` on, in step order."""
    found = sorted(Path(run, "checkpoints").glob("step_*"))
    return [p for p in found if int(p.name.split("_")[1]) >= first_step]

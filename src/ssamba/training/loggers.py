"""Where a run's metric lines go: ``metrics.jsonl`` always, TensorBoard and Weights & Biases when
asked for (``--logger jsonl,tensorboard,wandb``).

``metrics.jsonl`` is the run's own record (``ssamba plot``, cross-validation and ``--resume``
read it), so it is written whatever the list says. A tracker that is asked for but not installed
stops the run before it starts, with the package to install: never a silent skip.

- ``tensorboard``: event files in ``RUN/tb/`` (``tensorboard --logdir RUN/tb``);
- ``wandb``: a run in ``RUN/wandb/`` with the settings as its config; ``WANDB_MODE=offline``
  keeps it local (``wandb sync RUN/wandb/offline-run-*`` uploads it later), ``WANDB_PROJECT``
  names the project (default ``ssamba``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from ssamba.configs import LOGGERS
from ssamba.errors import UsageError

__all__ = [
    "LOGGERS",
    "JsonlLogger",
    "MetricLogger",
    "TensorBoardLogger",
    "Trackers",
    "WandbLogger",
    "check_installed",
    "open_trackers",
    "parse_loggers",
]

# logger -> (module it needs, how to install it)
_NEEDS = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "wandb": ("wandb", "pip install 'ssamba[wandb]'"),
}
_NOT_SCALARS = ("step", "epoch", "kind")


class MetricLogger(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def parse_loggers(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"jsonl,tensorboard"`` (or a list) -> the loggers, ``jsonl`` first and always there."""
    if spec is None:
        items: list[str] = []
    elif isinstance(spec, str):
        items = [s.strip().lower() for s in spec.split(",") if s.strip()]
    else:
        items = [str(s).strip().lower() for s in spec]
    unknown = sorted(set(items) - set(LOGGERS))
    if unknown:
        raise UsageError(
            f"unknown logger {', '.join(unknown)}: choose from {', '.join(LOGGERS)} "
            "(comma-separated)"
        )
    return tuple(name for name in LOGGERS if name == "jsonl" or name in items)


def check_installed(names: Iterable[str]) -> None:
    """A UsageError naming the package to install for every requested tracker that is missing."""
    missing = [
        f"--logger {name} needs the {_NEEDS[name][0]} package ({_NEEDS[name][1]})"
        for name in names
        if name in _NEEDS and importlib.util.find_spec(_NEEDS[name][0]) is None
    ]
    if missing:
        raise UsageError("; ".join(missing))


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """``KIND/NAME`` -> value; a name that already starts with ``KIND/`` (the online probe's
    ``probe/...``) is kept as it is."""
    kind = record.get("kind", "train")
    return {
        k if k.startswith(f"{kind}/") else f"{kind}/{k}": v
        for k, v in record.items()
        if k not in _NOT_SCALARS and isinstance(v, int | float) and not isinstance(v, bool)
    }


class JsonlLogger:
    """One JSON object per line, appended (``metrics.jsonl``)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """Scalars as ``KIND/NAME`` (e.g. ``train/loss``, ``valid/acc``) against the step."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter  # optional dependency

        self.writer = SummaryWriter(str(folder))

    def log(self, record: dict[str, Any]) -> None:
        for key, value in _scalars(record).items():
            self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run in ``folder/wandb`` (``WANDB_MODE=offline``: local files only)."""

    def __init__(self, folder: Path, settings: dict[str, Any]):
        import wandb  # optional dependency

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ssamba"),
            name=Path(folder).name,
            dir=str(folder),
            config=json.loads(json.dumps(settings, default=str)),
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(_scalars(record), step=record["step"])

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Every logger of a run: one ``log`` and one ``close`` for all."""

    def __init__(self, loggers: list[MetricLogger]):
        self.loggers = loggers

    def log(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_trackers(
    names: Iterable[str], folder: Path, settings: dict[str, Any], metrics_file: str
) -> Trackers:
    """The loggers ``names`` for the run folder ``folder`` (checked with
    :func:`check_installed` first)."""
    names = parse_loggers(list(names))
    check_installed(names)
    folder = Path(folder)
    loggers: list[MetricLogger] = [JsonlLogger(folder / metrics_file)]
    if "tensorboard" in names:
        loggers.append(TensorBoardLogger(folder / "tb"))
    if "wandb" in names:
        loggers.append(WandbLogger(folder, settings))
    return Trackers(loggers)

"""A run's output folder: what it holds, and the checks that keep it consistent.

``run.json`` (the settings), ``metrics.jsonl``, ``checkpoints/step_N`` (model + trainer state),
``latest`` (the newest checkpoint), ``best/`` and ``final/`` (model folders), ``summary.json``,
``tb/`` (``--logger tensorboard``), ``wandb/`` (``--logger wandb``). Every file and folder is
replaced atomically (:mod:`ssamba.fileio`): a run killed at any moment leaves the previous
version or the new one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ssamba.errors import TrainingError
from ssamba.fileio import atomic_write_json, atomic_write_text, replace_folder
from ssamba.models.saving import read_pretrained, save_pretrained
from ssamba.training.loggers import check_installed, open_trackers, parse_loggers

CHECKPOINTS, LATEST, METRICS, RUN_FILE = "checkpoints", "latest", "metrics.jsonl", "run.json"
TRAINER_STATE = "trainer_state.pt"
SUMMARY_FILE = "summary.json"
# Settings that may change when a run is resumed (they do not alter what was computed so far).
RESUMABLE_CHANGES = {
    "max_steps",
    "max_minutes",
    "epochs",
    "eval_every",
    "save_every",
    "keep",
    "workers",
    "log_every",
    "logger",
}
# run.json keys of older versions: renamed ones, and ones no longer recorded (the model config
# and class list are now checked against the checkpoint itself, see RunFolder.load_checkpoint).
_RENAMED = {"task": "command", "init": "checkpoint", "num_workers": "workers"}
_DROPPED = {"resume", "overwrite", "progress", "model_config", "classes"}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def chosen_model(out: str | Path) -> Path:
    """A run's model to test: best/ (by the validation metric) when there is one, else final/."""
    best = Path(out) / "best"
    return best if best.is_dir() else Path(out) / "final"


def load_chosen_model(out: str | Path, model) -> Path:
    """Load the weights of a run's :func:`chosen_model` into ``model``; returns its folder."""
    chosen = chosen_model(out)
    model.load_state_dict(read_pretrained(chosen)[1])
    return chosen


def _upgrade(saved: dict) -> dict:
    """The run.json of an older version in today's keys (so it can still be resumed)."""
    return {_RENAMED.get(k, k): v for k, v in saved.items() if k not in _DROPPED}


class RunFolder:
    """The output folder of one run (see the module docstring)."""

    def __init__(
        self,
        out: str | Path,
        settings: dict,
        resume: bool,
        overwrite: bool,
        main: bool,
        extra_files: dict[str, str] | None = None,
    ):
        """Check the folder against the request; changes nothing (see :meth:`start`).

        ``extra_files`` (name -> text) are written into every saved model folder. Every rank
        checks before rank 0 writes (a barrier between them), so all ranks see the same folder
        and agree on the verdict."""
        self.path = Path(out)
        self.main = main
        self.settings, self.replace = settings, False
        self.extra_files = dict(extra_files or {})
        self.loggers = parse_loggers(settings.get("logger"))
        check_installed(self.loggers)  # a missing tracker stops the run before it starts
        self.trackers = None
        run_file = self.path / RUN_FILE
        if run_file.exists() and not resume:
            if not overwrite:
                raise TrainingError(
                    f"{self.path} already holds a run: pass --resume to continue it or "
                    "--overwrite to replace it"
                )
            self.replace = True
        if resume and run_file.exists():
            self._check_same_settings(_upgrade(json.loads(run_file.read_text())))

    def _check_same_settings(self, saved: dict) -> None:
        changed = sorted(
            k
            for k in set(saved) | set(self.settings)
            if k not in RESUMABLE_CHANGES and saved.get(k) != self.settings.get(k)
        )
        if changed:
            details = ", ".join(
                f"{k}: {saved.get(k)!r} -> {self.settings.get(k)!r}" for k in changed
            )
            raise TrainingError(f"{self.path}: --resume with different settings ({details})")

    def start(self) -> None:
        """(Main rank) clear a replaced run, create the folder and write run.json."""
        if self.replace:
            for name in (CHECKPOINTS, "best", "final", "tb", "wandb", METRICS, LATEST, RUN_FILE):
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / RUN_FILE, self.settings, default=str)

    # ------------------------------------------------------------------------ models
    def _write_model(self, model, folder: Path) -> None:
        save_pretrained(model, folder)
        for name, text in self.extra_files.items():
            (folder / name).write_text(text)

    def save_model(self, model, name: str) -> Path:
        """A complete model folder (best/, final/), replaced atomically."""
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=f".tmp_{name}_"))
        self._write_model(model, tmp)
        return replace_folder(tmp, self.path / name)

    # ------------------------------------------------------------------------ checkpoints
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
        self._write_model(model, tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE)
        replace_folder(tmp, final)
        atomic_write_text(self.path / LATEST, f"{CHECKPOINTS}/{final.name}\n")
        old = sorted(p for p in (self.path / CHECKPOINTS).glob("step_*") if p != final)
        for stale in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def load_checkpoint(self, ckpt: Path, model) -> dict:
        """Load ``ckpt``'s weights into ``model`` and return its trainer state.

        The checkpoint must hold the same model (config) and the same extra files (e.g. the class
        list) as this run would write: anything else is another run's checkpoint."""
        config, state = read_pretrained(ckpt)
        if config != model.config:
            raise TrainingError(f"{ckpt}: --resume with a different model configuration")
        for name, text in self.extra_files.items():
            path = ckpt / name
            if not path.is_file() or path.read_text() != text:
                raise TrainingError(f"{ckpt}: --resume with a different {name}")
        model.load_state_dict(state)
        return torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=True)

    # ------------------------------------------------------------------------ metrics
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
        if self.trackers is None:
            self.trackers = open_trackers(self.loggers, self.path, self.settings, METRICS)
        self.trackers.log(record)

    def close(self) -> None:
        """Flush and close the trackers (TensorBoard, wandb) at the end of the run."""
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, summary, default=str)

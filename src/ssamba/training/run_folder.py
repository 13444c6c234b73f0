"""A run's output folder: what it holds, and the checks that keep it consistent.

``run.json`` (the settings), ``metrics.jsonl``, ``checkpoints/step_N`` (model + trainer state),
``latest`` (the newest checkpoint), ``best/`` and ``final/`` (model folders; ``best_probe/`` with
``pretrain --keep-best-probe``), ``summary.json``, ``tb/`` (``--logger tensorboard``),
``wandb/`` (``--logger wandb``). Every file and folder is replaced atomically
(:mod:`ssamba.fileio`): a run killed at any moment leaves the previous version or the new one,
and the temporary files it leaves are removed when the run is started again.

``--resume`` continues from the newest intact checkpoint: one that cannot be read (a truncated
``trainer_state.pt``, missing weights) is passed over with a warning; when checkpoints exist but
none is intact the resume stops with an error (starting over silently would discard the run);
when there is none yet the run starts from scratch. Either way ``metrics.jsonl`` is cut back to
the step the run continues from (to nothing from scratch), so no step is logged twice.

A folder whose run never completed a step (it failed at set-up, e.g. a batch larger than the
data) holds nothing to keep (:meth:`RunFolder.has_progress`): a rerun into it, with or without
``--resume`` and with any settings, starts afresh instead of being refused.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from ssamba.errors import CheckpointError, TrainingError
from ssamba.fileio import (
    atomic_write_json,
    atomic_write_text,
    check_folder_target,
    lock_folder,
    remove_temporaries,
    staged_folder,
)
from ssamba.models.saving import read_pretrained, save_pretrained
from ssamba.training.loggers import check_installed, open_trackers, parse_loggers

log = logging.getLogger(__name__)

CHECKPOINTS, LATEST, METRICS, RUN_FILE = "checkpoints", "latest", "metrics.jsonl", "run.json"
TRAINER_STATE = "trainer_state.pt"
SUMMARY_FILE = "summary.json"
# Settings that may change when a run is resumed (they do not alter what was computed so far).
RESUMABLE_CHANGES = {
    "max_steps",
    "max_minutes",
    "epochs",
    "eval_every",
    "probe_every",  # the online probe only watches training (docs/pretraining.md)
    "save_every",
    "keep",
    "workers",
    "log_every",
    "scan_backend",  # the same maths on another kernel (e.g. resumed on a GPU)
    "logger",
    "allow_overlap",  # a check of the inputs, not of what is computed
    # provenance (recorded only): resuming on another machine or software version is allowed
    "version",
    "git",
    "torch",
    "numba",
    "triton",
    "devices",
}
# What a failed write raises: OSError, or safetensors' own error (a full disk shows as either).
WRITE_ERRORS = (OSError, SafetensorError)
# run.json keys of older versions: renamed ones, and ones no longer recorded (the model config
# and class list are now checked against the checkpoint itself, see RunFolder.load_checkpoint).
_RENAMED = {"task": "command", "init": "checkpoint", "num_workers": "workers"}
_DROPPED = {"resume", "overwrite", "progress", "model_config", "classes"}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl. A torn last line (a run killed mid-write, a full disk) is
    left out; a bad line anywhere else is damage, not a torn write: TrainingError names it."""
    lines = [(i, ln) for i, ln in enumerate(Path(path).read_text().splitlines(), 1) if ln.strip()]
    records = []
    for n, (lineno, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if n == len(lines) - 1:
                break  # the torn last line of an interrupted write
            raise TrainingError(f"{path}:{lineno}: not a JSON record (damaged metrics file)")
        records.append(record)
    return records


def checkpoint_step(folder: Path) -> int | None:
    """N of a ``step_N`` folder (None for any other name)."""
    prefix, _, number = folder.name.partition("_")
    return int(number) if prefix == "step" and number.isdigit() else None


def chosen_model(out: str | Path) -> Path:
    """A run's model to test: best/ (by the validation metric) when there is one, else final/."""
    best = Path(out) / "best"
    return best if best.is_dir() else Path(out) / "final"


def load_chosen_model(out: str | Path, model) -> Path:
    """Load the weights of a run's :func:`chosen_model` into ``model``; returns its folder."""
    chosen = chosen_model(out)
    model.load_state_dict(read_pretrained(chosen)[1])
    return chosen


def list_checkpoints(out: str | Path) -> list[Path]:
    """A run's checkpoints/step_N folders, newest first."""
    found = [p for p in (Path(out) / CHECKPOINTS).glob("step_*") if p.is_dir()]
    found = [p for p in found if checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def has_progress(out: str | Path) -> bool:
    """Whether a run folder holds anything a run computed: a checkpoint, a saved model, a
    summary, or a metrics line of a step (step 0, the online probe of the initial weights, does
    not count). A run that failed at set-up has none: a rerun may start afresh."""
    path = Path(out)
    if list_checkpoints(path) or (path / SUMMARY_FILE).exists():
        return True
    if any((path / name).is_dir() for name in ("best", "best_probe", "final")):
        return True
    metrics = path / METRICS
    try:
        records = read_metrics(metrics) if metrics.is_file() else []
    except TrainingError:
        return True  # damaged, but something was logged: keep it unless told otherwise
    return any(isinstance(r.get("step"), int) and r["step"] >= 1 for r in records)


def check_new_run(out: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse a new run into a folder holding one that made progress, unless ``resume`` or
    ``overwrite``: what the run would refuse later, checked before any model is loaded."""
    path = check_folder_target(out, "run's output folder")
    if resume or overwrite or not (path / RUN_FILE).exists():
        return
    if has_progress(path):
        raise TrainingError(
            f"{path} already holds a run: pass --resume to continue it or --overwrite to replace it"
        )


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
        self.path = check_folder_target(out, "run's output folder")
        self.main = main
        self.settings, self.replace = settings, False
        self.extra_files = dict(extra_files or {})
        self.loggers = parse_loggers(settings.get("logger"))
        check_installed(self.loggers)  # a missing tracker stops the run before it starts
        self.trackers = None
        self._lock: int | None = None
        run_file = self.path / RUN_FILE
        if run_file.exists() and not self.has_progress():
            # a run that failed before its first step (a batch larger than the data, say) left
            # nothing worth keeping: the corrected rerun, with --resume or without, starts afresh
            if main:
                log.warning("%s: the run there never completed a step; starting afresh", self.path)
            self.replace = True
            return
        if run_file.exists() and not resume:
            check_new_run(self.path, resume, overwrite)
            self.replace = True
        if resume and run_file.exists():
            self._check_same_settings(_upgrade(json.loads(run_file.read_text())))

    def has_progress(self) -> bool:
        """See :func:`has_progress`."""
        return has_progress(self.path)

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
        """(Main rank) lock the folder, clear a replaced run, create the folder and write
        run.json. The lock (:func:`ssamba.fileio.lock_folder`, released by :meth:`close` or when
        the process ends) refuses a second run into the same folder, e.g. two ``--resume``."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = lock_folder(self.path, "training into this folder")
        if self.replace:
            replaced = (CHECKPOINTS, "best", "best_probe", "final", "tb", "wandb", METRICS, LATEST)
            for name in (*replaced, RUN_FILE):
                target = self.path / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        (self.path / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
        # what a run killed mid-write left: half-written checkpoints and models, temp files
        for folder in (self.path, self.path / CHECKPOINTS):
            for path in remove_temporaries(folder):
                log.info("removed %s (left by an interrupted run)", path)
        atomic_write_json(self.path / RUN_FILE, self.settings, default=str)

    # ------------------------------------------------------------------------ models
    def _write_model(self, model, folder: Path, files: dict[str, str] | None = None) -> None:
        save_pretrained(model, folder)
        for name, text in {**self.extra_files, **(files or {})}.items():
            (folder / name).write_text(text)  # inside a staged folder: renamed whole

    def save_model(self, model, name: str, files: dict[str, str] | None = None) -> Path:
        """A complete model folder (best/, final/), replaced atomically; ``files`` (name ->
        text) are written into it besides the run's extra files (e.g. what selected it)."""
        target = self.path / name
        try:
            with staged_folder(target) as tmp:
                self._write_model(model, tmp, files)
        except WRITE_ERRORS as err:
            raise _save_error(target, err, f"{name}/ is as it was") from None
        return target

    # ------------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self) -> Path | None:
        pointer = self.path / LATEST
        if not pointer.exists():
            return None
        target = self.path / pointer.read_text().strip()
        return target if (target / TRAINER_STATE).exists() else None

    def checkpoints(self) -> list[Path]:
        """The run's checkpoints/step_N folders, newest first."""
        return list_checkpoints(self.path)

    def save_checkpoint(self, model, trainer_state: dict, step: int, keep: int) -> Path:
        """Write checkpoints/step_N atomically (temp folder + rename), then move ``latest``.

        A failed write (a full disk) leaves no temporary folder, and the previous checkpoint and
        ``latest`` as they were: TrainingError says so in one line."""
        final = self.path / CHECKPOINTS / f"step_{step:08d}"
        try:
            with staged_folder(final, prefix=".tmp_step_") as tmp:
                self._write_model(model, tmp)
                # through memory: torch.save hides a full disk in an obscure RuntimeError
                buf = io.BytesIO()
                torch.save(trainer_state, buf)
                (tmp / TRAINER_STATE).write_bytes(buf.getvalue())
            atomic_write_text(self.path / LATEST, f"{CHECKPOINTS}/{final.name}\n")
        except WRITE_ERRORS as err:
            intact = self.latest_checkpoint()
            kept = f"{intact.relative_to(self.path)} is intact" if intact else "no earlier one"
            raise _save_error(final, err, kept) from None
        older = [p for p in self.checkpoints() if checkpoint_step(p) < step]
        # newer ones belong to a run resumed from before them (they were damaged): superseded
        newer = [p for p in self.checkpoints() if checkpoint_step(p) > step]
        for stale in newer + older[max(0, keep - 1) :]:
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def resume_checkpoint(self, model) -> tuple[Path, dict] | None:
        """Load the newest intact checkpoint's weights into ``model``; it and its trainer state.

        None when the run has no checkpoint yet; a damaged one is passed over with a warning;
        TrainingError when there are checkpoints and none is intact, or the newest intact one
        holds another model (see :meth:`load_checkpoint`)."""
        damaged = []
        for ckpt in self.checkpoints():
            try:
                config, weights, state = _read_checkpoint(ckpt)
            except CheckpointError as err:
                log.warning("--resume: passing over %s: %s", ckpt.name, err)
                damaged.append(ckpt.name)
                continue
            self._check_same_model(ckpt, config, model)
            model.load_state_dict(weights)
            if damaged:
                log.warning("--resume: continuing from %s instead", ckpt.name)
            return ckpt, state
        if damaged:
            raise TrainingError(
                f"{self.path}: no intact checkpoint to resume from ({', '.join(damaged)} "
                "damaged); start the run again without --resume"
            )
        return None

    def load_checkpoint(self, ckpt: Path, model) -> dict:
        """Load ``ckpt``'s weights into ``model`` and return its trainer state.

        The checkpoint must hold the same model (config) and the same extra files (e.g. the class
        list) as this run would write: anything else is another run's checkpoint."""
        config, weights, state = _read_checkpoint(ckpt)
        self._check_same_model(ckpt, config, model)
        model.load_state_dict(weights)
        return state

    def _check_same_model(self, ckpt: Path, config, model) -> None:
        if config != model.config:
            raise TrainingError(f"{ckpt}: --resume with a different model configuration")
        for name, text in self.extra_files.items():
            path = ckpt / name
            if not path.is_file() or path.read_text() != text:
                raise TrainingError(f"{ckpt}: --resume with a different {name}")

    # ------------------------------------------------------------------------ metrics
    def truncate_metrics(self, step: int | None) -> None:
        """Drop metric lines written after ``step`` (by a run killed after its last checkpoint),
        and a torn last line; ``None`` drops them all (a run resumed from scratch)."""
        path = self.path / METRICS
        if not path.exists():
            return
        records = [] if step is None else read_metrics(path)
        keep = [r for r in records if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))

    def log_metrics(self, record: dict) -> None:
        if not self.main:
            return
        if self.trackers is None:
            self.trackers = open_trackers(self.loggers, self.path, self.settings, METRICS)
        self.trackers.log(record)

    def close(self) -> None:
        """Flush and close the trackers (TensorBoard, wandb) at the end of the run; release the
        folder's lock."""
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, summary, default=str)


def _read_checkpoint(ckpt: Path) -> tuple[Any, dict, dict]:
    """A checkpoint's model config, weights and trainer state; CheckpointError when any of
    them cannot be read (a truncated or missing file)."""
    config, weights = read_pretrained(ckpt)
    path = ckpt / TRAINER_STATE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise CheckpointError(f"{path}: unreadable ({reason[:200]})") from None
    if not isinstance(state, dict) or "progress" not in state:
        raise CheckpointError(f"{path}: not a trainer state")
    return config, weights, state


def _save_error(target: Path, err: Exception, kept: str) -> TrainingError:
    """One line for a failed save: what, why (a full disk), and what is still intact."""
    if isinstance(err, OSError) and err.strerror:
        reason = err.strerror
    elif "os error 28" in str(err):  # safetensors' wording of ENOSPC
        reason = "No space left on device"
    else:
        reason = " ".join(str(err).split())[:200]
    return TrainingError(f"could not save {target}: {reason}; {kept}")

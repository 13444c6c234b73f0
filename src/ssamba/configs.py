"""The settings of every training command, in one place: the one home of their defaults.

:class:`TrainConfig` holds what every training job shares; :class:`PretrainConfig`,
:class:`FinetuneConfig` and :class:`DaslConfig` add each task's own. The command line builds its
options from these fields (an option's destination is the field's name, its default the field's
default), and a run's ``run.json`` records :meth:`TrainConfig.settings`, so that
``ssamba COMMAND --config RUN/run.json`` replays the run.

Values are checked on construction (:class:`~ssamba.errors.UsageError` names the field). This
module imports no torch, so ``ssamba COMMAND --help`` shows these defaults quickly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import InitVar, dataclass, field
from typing import Any

from ssamba.constants import BAD_FILE_POLICIES, FRAMES_PER_SECOND, PATCH
from ssamba.errors import UsageError, did_you_mean
from ssamba.models.config import POOLS, list_models

PRECISIONS = ("fp32", "bf16", "fp16")
# "teacher": an EMA teacher's layer outputs as regression targets (docs/pretraining.md; ours)
OBJECTIVES = ("joint", "mpc", "mpg", "teacher")
# how the teacher objective's student hides its masked patches: a learned mask token in place,
# or dropped from the sequence (MAE-style)
HIDE_MASKED = ("drop", "token")
MASK_MODES = ("cluster", "random", "frame")
LOSSES = ("ce", "bce")
HEAD_INITS = ("random", "probe")  # fine-tuning's head: fresh, or the linear probe's (LP-FT)
SELECTION_METRICS = ("acc", "map", "loss")  # loss: the validation loss, lower is better
MIXTURE_MODES = ("whole", "crop")
# fine-tuning's decay after warm-up: lr_decay every epoch from lr_decay_start on, or at each of
# lr_milestones (torch's MultiStepLR, as the official AS-20K script)
LR_SCHEDULES = ("step_decay", "milestones")
LOGGERS = ("jsonl", "tensorboard", "wandb")  # metric destinations (ssamba.training.loggers)
# Fine-tuning's input size and strides without a checkpoint (one given: its own, unless told)
FRESH_LAYOUT = {"target_length": 1024, "fstride": 10, "tstride": 10}
# Actions on the output folder and cosmetics: they do not define the run, run.json leaves them out.
RUN_CONTROL = frozenset({"resume", "overwrite", "progress"})
_PROBE_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a probe set's name (--probe NAME=...)


def default_workers() -> int:
    """Loader processes by default: one per core, at most 8 (past that, training rarely waits
    for data and each worker costs memory)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, cores or 1)


def field_defaults(cls) -> dict[str, Any]:
    """``{field name: default}`` of a config class (None for a field without one)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


# ---------------------------------------------------------------------------- checks
def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _at_least(name: str, value, low, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        raise UsageError(f"{name} must be a number >= {low}, got {value!r}")
    if isinstance(value, float) and math.isinf(value):
        raise UsageError(f"{name} must be finite, got {value!r}")


def _positive(name: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    _at_least(name, value, 0)
    if not value > 0:
        raise UsageError(f"{name} must be > 0, got {value!r}")


def _loggers(value) -> None:
    names = [s.strip() for s in str(value).split(",") if s.strip()]
    for name in names or [""]:
        _choice("logger", name, LOGGERS)


def _target_length(value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < PATCH:
        raise UsageError(
            f"target_length must be an integer >= {PATCH} (one patch of {PATCH} frames), "
            f"got {value!r}"
        )


def _normalize(value) -> None:
    """The ``"MEAN,STD"`` form checked here (torch-free); presets and stats files are checked
    where they are read (:func:`ssamba.audio.normalize_stats`)."""
    if value is None or not isinstance(value, str) or value.count(",") != 1:
        return
    if os.path.exists(value):  # a stats file whose name holds a comma
        return
    try:
        mean, std = (float(x) for x in value.split(","))
    except ValueError:
        raise UsageError(f"normalize {value!r}: expected MEAN,STD numbers") from None
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise UsageError(
            f"normalize {value!r}: need a finite mean and a positive finite std, got {mean:g}, "
            f"{std:g}"
        )


def _preset(value) -> None:
    if value not in list_models():
        raise UsageError(
            f"model must be a preset ({', '.join(list_models())}), got {value!r}"
            f"{did_you_mean(str(value), list_models())}; "
            "pass saved weights as checkpoint"
        )


def parse_probe_spec(spec) -> tuple[str | None, str, str | None]:
    """``"[NAME=]TRAIN[,TEST]"`` (``--probe``) -> (NAME or None, TRAIN, TEST or None).

    A value that names an existing path is TRAIN alone (a comma or ``=`` in a file name is
    then no separator); a NAME is letters, digits, ``_``, ``-`` and ``.``."""
    form = "expected [NAME=]TRAIN[,TEST] (labelled manifests)"
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f"--probe {spec!r}: {form}")
    if os.path.exists(spec):
        return None, spec, None
    name, sep, rest = spec.partition("=")
    if not sep or not _PROBE_NAME.fullmatch(name):
        if sep and not any(ch in name for ch in "/\\"):
            raise UsageError(f"--probe {spec!r}: the name {name!r} may hold only letters, "
                             "digits, _, - and .")  # fmt: skip
        name, rest = None, spec
    if os.path.exists(rest):
        return name, rest, None
    parts = rest.split(",")
    if len(parts) > 2 or not all(p.strip() for p in parts):
        raise UsageError(f"--probe {spec!r}: {form}")
    return name, parts[0], parts[1] if len(parts) == 2 else None


# ---------------------------------------------------------------------------- shared settings
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
    precision: str = "fp32"  # "bf16" autocast, or "fp16" autocast with dynamic loss scaling
    seed: int = 0
    eval_every: int = 0  # steps; 0: at the end of every epoch
    save_every: int = 0  # steps; 0: at the end of every epoch
    keep: int = 2  # checkpoints kept besides best/ and final/
    log_every: int = 10  # steps between metric lines
    workers: int = field(default_factory=default_workers)  # data loading processes
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    logger: str = "jsonl"  # comma-separated LOGGERS; metrics.jsonl is always written
    # a file in both the training set and a held-out one is an error unless this is set
    allow_overlap: bool = False

    def __post_init__(self):
        self.betas = tuple(self.betas)
        _loggers(self.logger)
        _choice("precision", self.precision, PRECISIONS)
        for name in ("batch_size", "accum_steps", "epochs", "keep", "log_every"):
            _at_least(name, getattr(self, name), 1)
        for name in ("warmup_steps", "eval_every", "save_every", "workers", "seed"):
            _at_least(name, getattr(self, name), 0)
        _at_least("weight_decay", self.weight_decay, 0)
        _positive("lr", self.lr)
        _at_least("max_steps", self.max_steps, 1, optional=True)
        _positive("max_minutes", self.max_minutes, optional=True)
        _positive("grad_clip", self.grad_clip, optional=True)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UsageError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.resume and self.overwrite:
            raise UsageError(
                "resume and overwrite conflict: --resume continues the run in --out, --overwrite "
                "replaces it; pass one of them"
            )

    def to_dict(self) -> dict:
        """Every field, tuples as lists (JSON)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def settings(self) -> dict:
        """What run.json records: every field but :data:`RUN_CONTROL`, each the destination of
        a command-line option (so ``--config run.json`` replays the run)."""
        return {k: v for k, v in self.to_dict().items() if k not in RUN_CONTROL}


# ---------------------------------------------------------------------------- pretraining
@dataclass
class PretrainConfig(TrainConfig):
    """``ssamba pretrain``: masked spectrogram patch modelling (docs/pretraining.md)."""

    model: str = "ssamba_tiny"  # the preset to build
    checkpoint: str | None = None  # saved weights to continue from; None: a fresh ``model``
    train: str = ""
    valid: str | None = None
    target_length: int = 1024
    # "auto": the checkpoint's own statistics (AudioSet for a preset or an official .pth); or a
    # preset, "mean,std", a stats JSON from `ssamba stats`, or none
    normalize: str | None = "auto"
    mask_patch: int | None = None  # None: 400 of 512 patches, scaled to the input length
    mask_mode: str = "cluster"  # "cluster" (SSAST), "random" or "frame"
    objective: str = "joint"
    mpg_weight: float = 10.0
    on_bad_file: str = "error"
    model_overrides: dict = field(default_factory=dict)  # e.g. {"depth": 4} for small tests
    # as the official run: validate (and maybe halve the lr) every 4000 steps, and at the end
    eval_every: int = 4000
    # the online linear probe (docs/pretraining.md, "Online probe"): "[NAME=]TRAIN[,TEST]"
    # labelled manifests, one probe set each, scored at step 0, every probe_every steps (0: at
    # the run's evaluations, every eval_every steps) and at the end
    probe: list[str] = field(default_factory=list)
    probe_every: int = 0
    probe_pooling: str = "mean"  # as `ssamba probe --pooling`
    probe_layers: list[int] = field(default_factory=lambda: [-1])  # as `ssamba probe --layers`
    probe_max_files: int = 2000  # per split: a larger one is probed on a fixed subset
    probe_batch_size: int = 8  # clips embedded together (more: faster, more memory)
    keep_best_probe: bool = False  # keep the model of the best mean probe score in best_probe/
    # The teacher objective (objective "teacher"; docs/pretraining.md, "The teacher objective"):
    # an EMA copy of the encoder sees the whole clip; the mean of its top target_layers layer
    # outputs, each instance-normalised, is what a light decoder after the student must predict
    # at the hidden patches, over masks_per_clip views per clip (one teacher pass); plus
    # utterance_weight x the error of the student's class token against the clip's target.
    # Ours, chosen for short CPU runs (not a published recipe; the study in the docs measures it).
    mask_ratio: float = 0.8  # hidden patches per view (inverse block masking)
    mask_block: int = 3  # side of the visible squares, in patches
    masks_per_clip: int = 4
    hide_masked: str = "drop"  # "drop" (MAE-style) or "token" (a learned mask token in place)
    target_layers: int = 8  # top layer outputs averaged (all of them when the encoder has fewer)
    utterance_weight: float = 1.0
    decoder_layers: int = 2
    # EMA decay: ema_decay at the first update, rising linearly to ema_end_decay over
    # ema_anneal_steps updates, then constant (data2vec's schedule; equal values: constant)
    ema_decay: float = 0.996
    ema_end_decay: float = 0.9999
    ema_anneal_steps: int = 10_000

    def __post_init__(self):
        super().__post_init__()
        _preset(self.model)
        self._check_probe()
        self._check_teacher()
        _choice("objective", self.objective, OBJECTIVES)
        _choice("mask_mode", self.mask_mode, MASK_MODES)
        _choice("on_bad_file", self.on_bad_file, BAD_FILE_POLICIES)
        _target_length(self.target_length)
        _normalize(self.normalize)
        _at_least("mask_patch", self.mask_patch, 1, optional=True)
        _at_least("mpg_weight", self.mpg_weight, 0)

    def _check_teacher(self) -> None:
        _choice("hide_masked", self.hide_masked, HIDE_MASKED)
        if isinstance(self.mask_ratio, bool) or not (
            isinstance(self.mask_ratio, int | float) and 0 < self.mask_ratio < 1
        ):
            raise UsageError(
                f"mask_ratio must be between 0 and 1 (exclusive), got {self.mask_ratio!r}"
            )
        for name in ("mask_block", "masks_per_clip", "target_layers", "decoder_layers",
                     "ema_anneal_steps"):  # fmt: skip
            _at_least(name, getattr(self, name), 1)
        _at_least("utterance_weight", self.utterance_weight, 0)
        for name in ("ema_decay", "ema_end_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, int | float) and 0 <= value <= 1):
                raise UsageError(f"{name} must be in [0, 1], got {value!r}")

    def _check_probe(self) -> None:
        if isinstance(self.probe, str):  # one set from a config file
            self.probe = [self.probe]
        self.probe = list(self.probe or [])
        for spec in self.probe:
            parse_probe_spec(spec)
        _at_least("probe_every", self.probe_every, 0)
        _at_least("probe_max_files", self.probe_max_files, 1)
        _at_least("probe_batch_size", self.probe_batch_size, 1)
        layers = self.probe_layers
        self.probe_layers = [layers] if isinstance(layers, int) else list(layers or [])
        if not self.probe_layers or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.probe_layers
        ):
            raise UsageError(f"probe_layers must be layer indices, got {layers!r}")
        if self.keep_best_probe and not self.probe:
            raise UsageError("--keep-best-probe needs a probe set: pass --probe TRAIN[,TEST]")


# ---------------------------------------------------------------------------- fine-tuning
@dataclass
class _ClassifierSettings:
    """Settings and checks shared by the two classifier configs (fine-tuning and DASL); listed
    before TrainConfig among their bases, so that these defaults replace its pretraining ones
    (field order stays TrainConfig's, then these, then the config's own)."""

    checkpoint: str | None = None  # official .pth or our folder; None: a random ``model``
    model: str = "ssamba_tiny"  # the preset used when checkpoint is None
    train: str = ""
    valid: str | None = None
    test: str | None = None
    lr: float = 1e-4
    weight_decay: float = 5e-7
    warmup_steps: int = 0
    init: InitVar[str | None] = None  # the old name of ``checkpoint``, kept for one release

    INHERITS_LAYOUT = False  # None strides: the checkpoint's (resolved when the run starts)

    def _take_old_checkpoint_name(self, init: str | None) -> None:
        if init is not None and self.checkpoint is None:
            self.checkpoint = init

    def _check_classifier(self):
        _preset(self.model)
        for name in ("fstride", "tstride"):
            _at_least(name, getattr(self, name), 1, optional=self.INHERITS_LAYOUT)
        for name in ("freqm", "timem", "lr_decay_start"):
            _at_least(name, getattr(self, name), 0)
        _positive("head_lr_mult", self.head_lr_mult)
        _positive("lr_decay", self.lr_decay)


@dataclass
class FinetuneConfig(_ClassifierSettings, TrainConfig):
    """``ssamba finetune``: a classification head on a (pretrained or random) encoder."""

    # None: the checkpoint's input size and strides (resolved when the run starts, recorded
    # resolved in run.json); without a checkpoint FRESH_LAYOUT's
    target_length: int | None = None
    normalize: str | None = "auto"  # as PretrainConfig.normalize
    fstride: int | None = None
    tstride: int | None = None
    freqm: int = 0
    timem: int = 0
    mixup: float = 0.0
    noise: bool = False
    loss: str = "ce"  # "ce" (single-label) or "bce" (multi-label, or the reference's SC recipe)
    metric: str = "acc"  # "acc" or "map": selects the best epoch
    head_lr_mult: float = 1.0
    lr_decay: float = 1.0
    lr_decay_start: int = 0
    lr_schedule: str = "step_decay"
    lr_milestones: list[int] = field(default_factory=list)  # 1-based epochs (milestones only)
    # [first, last] epochs (1-based, both included) whose checkpoints are averaged into
    # averaged/ at the end, as the official AudioSet script does; [] for none
    average_epochs: list[int] = field(default_factory=list)
    pool: str = "mean"
    # LP-FT (docs/finetuning.md): "probe" fits the linear probe of the frozen features the head
    # reads (train split, L2 chosen on valid) and starts the head from it; "random": a fresh head
    head_init: str = "random"
    layer_decay: float = 1.0  # lr x layer_decay ** (layers between a parameter and the head)
    freeze_encoder_steps: int = 0  # only the head trains for the first N steps
    balanced: bool = False
    on_bad_file: str = "error"
    model_overrides: dict = field(default_factory=dict)
    INHERITS_LAYOUT = True

    def __post_init__(self, init=None):
        self._take_old_checkpoint_name(init)
        if self.checkpoint is None:  # a fresh model: the documented defaults
            for name, value in FRESH_LAYOUT.items():
                if getattr(self, name) is None:
                    setattr(self, name, value)
        super().__post_init__()
        self._check_classifier()
        _choice("head_init", self.head_init, HEAD_INITS)
        if isinstance(self.layer_decay, bool) or not (
            isinstance(self.layer_decay, int | float) and 0 < self.layer_decay <= 1
        ):
            raise UsageError(f"layer_decay must be in (0, 1], got {self.layer_decay!r}")
        _at_least("freeze_encoder_steps", self.freeze_encoder_steps, 0)
        _choice("loss", self.loss, LOSSES)
        _choice("metric", self.metric, SELECTION_METRICS)
        _choice("pool", self.pool, POOLS)
        _choice("on_bad_file", self.on_bad_file, BAD_FILE_POLICIES)
        if self.target_length is not None:
            _target_length(self.target_length)
        _normalize(self.normalize)
        self._check_milestones()
        if not 0 <= self.mixup <= 1:
            raise UsageError(f"mixup must be between 0 and 1, got {self.mixup!r}")

    def _check_milestones(self) -> None:
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        self.lr_milestones = list(self.lr_milestones or [])
        for m in self.lr_milestones:
            if isinstance(m, bool) or not isinstance(m, int) or m < 1:
                raise UsageError(f"lr_milestones must be epochs >= 1, got {self.lr_milestones!r}")
        if self.lr_schedule == "milestones" and not self.lr_milestones:
            raise UsageError("lr_schedule milestones needs lr_milestones (e.g. 15 25 35 45)")
        self.average_epochs = list(self.average_epochs or [])
        window = self.average_epochs
        if window and not (
            len(window) == 2 and all(isinstance(e, int) and not isinstance(e, bool) for e in window)
            and 1 <= window[0] <= window[1] <= self.epochs
        ):  # fmt: skip
            raise UsageError(
                f"average_epochs must be FIRST LAST with 1 <= FIRST <= LAST <= epochs "
                f"({self.epochs}), got {window!r}"
            )


# ---------------------------------------------------------------------------- DASL
@dataclass
class DaslConfig(_ClassifierSettings, TrainConfig):
    """``ssamba dasl``: one label per chunk of long recordings (defaults: the reference script)."""

    chunk_seconds: float = 1.0
    seconds: int | None = None  # recording length; None: the longest training recording
    normalize: str | None = "audioset"
    fstride: int = 16
    tstride: int = 16
    freqm: int = 48
    timem: int = 192
    head_lr_mult: float = 1.0
    lr_decay: float = 0.85
    lr_decay_start: int = 20
    lr_decay_every: int = 10
    model_overrides: dict = field(default_factory=dict)
    batch_size: int = 5
    epochs: int = 50

    def __post_init__(self, init=None):
        self._take_old_checkpoint_name(init)
        super().__post_init__()
        self._check_classifier()
        _positive("chunk_seconds", self.chunk_seconds)
        _normalize(self.normalize)
        _at_least("lr_decay_every", self.lr_decay_every, 1)
        _at_least("seconds", self.seconds, 1, optional=True)

    @property
    def target_length(self) -> int:
        if self.seconds is None:
            raise UsageError("seconds is not set yet")
        return int(self.seconds) * FRAMES_PER_SECOND


@dataclass
class DaslBuildConfig:
    """``ssamba dasl-build``: how :func:`ssamba.dasl.build_dasl_mixtures` builds recordings."""

    seconds: int = 60  # length of each recording
    mode: str = "whole"  # "whole" clips back to back (reference) or a random 1-s "crop" a second
    name: str = "mixtures"  # manifest and audio folder name
    seed: int = 0
    on_bad_file: str = "error"

    def __post_init__(self):
        _choice("mode", self.mode, MIXTURE_MODES)
        _choice("on_bad_file", self.on_bad_file, BAD_FILE_POLICIES)
        if isinstance(self.seconds, bool) or int(self.seconds) != self.seconds:
            raise UsageError(f"seconds must be a whole number, got {self.seconds!r}")
        _at_least("seconds", self.seconds, 1)
        _at_least("seed", self.seed, 0)
        if not self.name or any(ch in self.name for ch in "/\\") or self.name.startswith("."):
            raise UsageError(f"invalid name {self.name!r}")


__all__ = [
    "BAD_FILE_POLICIES",
    "LOGGERS",
    "LOSSES",
    "LR_SCHEDULES",
    "MASK_MODES",
    "MIXTURE_MODES",
    "OBJECTIVES",
    "PRECISIONS",
    "RUN_CONTROL",
    "SELECTION_METRICS",
    "HIDE_MASKED",
    "DaslBuildConfig",
    "DaslConfig",
    "FinetuneConfig",
    "PretrainConfig",
    "TrainConfig",
    "default_workers",
    "field_defaults",
    "parse_probe_spec",
]

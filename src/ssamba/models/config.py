"""Model dimensions as dataclasses, and the registry of named presets (``create_model``)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from ssamba.constants import PATCH
from ssamba.errors import UsageError, did_you_mean

SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}  # embed_dim, SSAST heads
POOLS = ("mean", "cls", "bands", "bands+std")  # fine-tuning head inputs (ModelConfig.pool)
HEAD_LOSSES = ("ce", "bce")  # what a head was trained with (ModelConfig.head_loss)
ARCHS = ("ssamba", "ssast")  # also the transformers model_type of each (ssamba.transformers)
# Keys a config.json may carry beside the model's fields so that transformers reads the same
# folder (ssamba.transformers writes them): ModelConfig.from_saved checks model_type and the
# label count, and leaves the rest to transformers.
TRANSFORMERS_KEYS = (
    "model_type", "architectures", "transformers_version", "id2label", "label2id",
    "problem_type", "dtype",
)  # fmt: skip


@dataclass
class ModelConfig:
    """Everything needed to build a model; saved as ``config.json`` next to the weights."""

    arch: str = "ssamba"  # "ssamba" (bidirectional Mamba) or "ssast" (ViT baseline)
    embed_dim: int = 192
    depth: int = 24  # SSAMBA: number of Mamba layers (used in pairs); SSAST: transformer blocks
    num_heads: int = 3  # SSAST only
    d_state: int = 16  # SSAMBA only, as are the next three
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(embed_dim / 16)
    num_mel_bins: int = 128
    input_tdim: int = 1024  # frames the positional embedding is laid out for
    fstride: int = 16
    tstride: int = 16
    num_classes: int = 0  # 0: no classification head; forward() returns the pooled embedding
    # Fine-tuning head input: "mean" of the patch tokens or the "cls" token(s) (the official
    # heads), or "bands": the time-mean of each frequency row of patches, concatenated
    # (f_dim * embed_dim features: keeps the spectral layout a global mean throws away);
    # "bands+std" appends each row's standard deviation over time (2 * f_dim * embed_dim).
    pool: str = "mean"
    # The loss the head was trained with, which fixes how its logits become scores: "ce"
    # (softmax over classes) or "bce" (a sigmoid per class: the official checkpoints).
    head_loss: str = "bce"
    pretrain_heads: bool = True  # mask_embed + cpredlayer + gpredlayer
    # Front-end normalisation the weights expect, (fbank - mean) / (2 * std); AudioSet by default.
    norm_mean: float = -4.2677393
    norm_std: float = 4.5689974
    pretrain_fdim: int = 128  # the pretraining input size (the official p_input_fdim/tdim)
    pretrain_tdim: int = 1024
    # Ablations reported in the paper; the defaults are the released models' settings.
    bidirectional: bool = True
    norm: str = "layernorm"  # or "rmsnorm"
    residual_in_fp32: bool = False
    drop_path: float = 0.1
    attention: str = "sdpa"  # SSAST: "sdpa" or "explicit" (the reference's N x N matrix)

    def __post_init__(self):
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise UsageError(
                    f"model config: {name} must be one of {', '.join(choices)}, "
                    f"got {getattr(self, name)!r}"
                )
        self._check_numbers()
        self._check_arch_fields()
        if self.arch == "ssamba" and self.bidirectional and self.depth % 2:
            raise UsageError(
                f"model config: depth={self.depth}: a bidirectional SSAMBA uses layers in pairs "
                "(give an even depth)"
            )
        if self.arch == "ssast" and self.embed_dim % self.num_heads:
            raise UsageError(
                f"model config: embed_dim={self.embed_dim} is not a multiple of "
                f"num_heads={self.num_heads}"
            )
        for name in ("num_mel_bins", "input_tdim"):
            if getattr(self, name) < PATCH:
                raise UsageError(
                    f"model config: {name}={getattr(self, name)}: the input must be at least "
                    f"{PATCH}x{PATCH} (one patch)"
                )
        if self.dt_rank is None:
            self.dt_rank = -(-self.embed_dim // 16)

    def _check_arch_fields(self) -> None:
        """A field of the other architecture must keep its default: given for this one it would
        be ignored without a word (``num_heads`` for an SSAMBA, ``d_state`` for an SSAST)."""
        for name in inapplicable_fields(self.arch):
            value = getattr(self, name)
            if name == "dt_rank":  # None: derived from embed_dim, and saved derived
                unchanged = value is None or value == -(-self.embed_dim // 16)
            else:
                unchanged = value == _DEFAULTS[name]
            if not unchanged:
                owner = next(a for a, names in ARCH_FIELDS.items() if name in names)
                raise UsageError(
                    f"model config: {name}={value!r} applies to {owner.upper()} models only, "
                    f"not to this {self.arch} model (leave it out)"
                )

    def _check_numbers(self) -> None:
        """Each number within what a model can be built from (a negative size would fail deep
        inside torch, a zero or NaN std would make every embedding NaN)."""
        for name, low in _AT_LEAST.items():
            value = getattr(self, name)
            if name == "dt_rank" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"model config: {name} must be an integer >= {low}, got {value!r}")
        for name in ("bidirectional", "pretrain_heads", "residual_in_fp32"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(
                    f"model config: {name} must be true or false, got {getattr(self, name)!r}"
                )
        if not _finite(self.norm_mean):
            raise UsageError(f"model config: norm_mean must be a finite number, got "
                             f"{self.norm_mean!r}")  # fmt: skip
        if not _finite(self.norm_std) or not self.norm_std > 0:
            raise UsageError(f"model config: norm_std must be a finite number > 0, got "
                             f"{self.norm_std!r}")  # fmt: skip
        if not _finite(self.drop_path) or not 0 <= self.drop_path < 1:
            raise UsageError(
                f"model config: drop_path must be a number in [0, 1), got {self.drop_path!r}"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """(frequency, time) patch grid of an input of ``input_tdim`` frames."""
        return patch_grid(self.num_mel_bins, self.input_tdim, self.fstride, self.tstride)

    @property
    def head_dim(self) -> int:
        """Width of the fine-tuning head's input (see ``pool``)."""
        bands = {"bands": 1, "bands+std": 2}.get(self.pool, 0) * self.grid[0]
        return self.embed_dim * (bands or 1)

    @property
    def num_class_tokens(self) -> int:
        return 1 if self.arch == "ssamba" else 2

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def saved_dict(self) -> dict:
        """What ``config.json`` holds: the fields, led by ``model_type`` (the architecture), which
        is all transformers needs to pick the model class (``ssamba.transformers``)."""
        return {"model_type": self.arch, **dataclasses.asdict(self)}

    @classmethod
    def from_saved(cls, data: dict) -> ModelConfig:
        """A config from ``config.json`` contents, written by ssamba or by transformers: the
        transformers keys (:data:`TRANSFORMERS_KEYS`) are checked against the fields, then set
        aside; any other unknown key is refused."""
        data = dict(data)
        extra = {k: data.pop(k) for k in TRANSFORMERS_KEYS if k in data}
        # an older version saved the other architecture's fields as given (they had no effect
        # on the weights): read as the defaults they always acted as
        for name in inapplicable_fields(data.get("arch", _DEFAULTS["arch"])):
            data.pop(name, None)
        config = cls.from_dict(data)
        model_type = extra.get("model_type", config.arch)
        if model_type != config.arch:
            raise UsageError(
                f"model config: model_type {model_type!r} contradicts arch {config.arch!r}"
            )
        labels = extra.get("id2label") or {}
        if labels and len(labels) != config.num_classes:
            raise UsageError(
                f"model config: id2label names {len(labels)} classes, but num_classes is "
                f"{config.num_classes}"
            )
        return config

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(
                f"unknown model config field(s) {', '.join(unknown)} (known: "
                f"{', '.join(sorted(known))})"
            )
        return cls(**data)


# The fields only one architecture reads; the other's config keeps their defaults.
ARCH_FIELDS = {
    "ssamba": ("d_state", "d_conv", "expand", "dt_rank", "bidirectional", "residual_in_fp32",
               "norm"),
    "ssast": ("num_heads", "attention"),
}  # fmt: skip
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def inapplicable_fields(arch: str) -> tuple[str, ...]:
    """The fields ``arch`` does not read (those of the other architecture)."""
    return tuple(n for a, names in ARCH_FIELDS.items() if a != arch for n in names)


_CHOICES = {
    "arch": ARCHS,
    "pool": POOLS,
    "head_loss": HEAD_LOSSES,
    "norm": ("layernorm", "rmsnorm"),
    "attention": ("sdpa", "explicit"),
}
# The smallest value of each integer field.
_AT_LEAST = {
    "embed_dim": 1, "depth": 1, "num_heads": 1, "d_state": 1, "d_conv": 1, "expand": 1,
    "dt_rank": 1, "num_mel_bins": 1, "input_tdim": 1, "fstride": 1, "tstride": 1,
    "num_classes": 0, "pretrain_fdim": PATCH, "pretrain_tdim": PATCH,
}  # fmt: skip


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def patch_grid(fdim: int, tdim: int, fstride: int, tstride: int) -> tuple[int, int]:
    return (fdim - PATCH) // fstride + 1, (tdim - PATCH) // tstride + 1


@dataclass(frozen=True)
class Preset:
    description: str
    config: dict = field(default_factory=dict)


def _presets() -> dict[str, Preset]:
    presets = {}
    for size, (dim, heads) in SIZES.items():
        presets[f"ssamba_{size}"] = Preset(
            f"SSAMBA {size}: 24 bidirectional Mamba layers, width {dim}",
            dict(arch="ssamba", embed_dim=dim, depth=24),
        )
        presets[f"ssast_{size}"] = Preset(
            f"SSAST {size}: 12-block ViT, width {dim}, {heads} heads (the baseline)",
            dict(arch="ssast", embed_dim=dim, depth=12, num_heads=heads, drop_path=0.0),
        )
    return presets


PRESETS = _presets()


# Where the released weights are published; nothing is downloaded at run time.
RELEASE_SOURCE = (
    "the official SSAMBA repository's README (github.com/SiavashShams/ssamba) links the "
    "released checkpoints"
)


@dataclass(frozen=True)
class Release:
    """One released official SSAMBA checkpoint (pretrained on AudioSet + LibriSpeech)."""

    name: str  # e.g. "ssamba_base_400": what load_model accepts
    size: str  # "tiny", "small" or "base"
    masked_patches: int  # patches masked per clip in pretraining (250, 300 or 400)
    filename: str  # the official file name, e.g. "ssamba_base_400.pth"
    source: str = RELEASE_SOURCE

    @property
    def preset(self) -> str:
        """The preset with the same architecture (``ssamba_<size>``)."""
        return f"ssamba_{self.size}"


def _releases() -> dict[str, Release]:
    out = {}
    for size in SIZES:
        for masked in (250, 300, 400):
            name = f"ssamba_{size}_{masked}"
            out[name] = Release(name, size, masked, f"{name}.pth")
    return out


RELEASES = _releases()


def list_models(pretrained: bool = False) -> list[str]:
    """Names accepted by :func:`create_model` (random weights); with ``pretrained=True``, the
    released official checkpoints that ``load_model`` finds by name (see :data:`RELEASES` for
    each one's size, masked patches, file name and source)."""
    if pretrained:
        return sorted(
            RELEASES,
            key=lambda n: (list(SIZES).index(RELEASES[n].size), RELEASES[n].masked_patches),
        )
    return sorted(PRESETS, key=lambda n: (n.split("_")[0], list(SIZES).index(n.split("_")[1])))


def preset_config(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise UsageError(
            f"unknown model {name!r}{did_you_mean(name, PRESETS)}; available: "
            f"{', '.join(list_models())}"
        )
    return ModelConfig.from_dict({**PRESETS[name].config, **overrides})

"""The Hugging Face door: SSAMBA and SSAST as transformers models (``pip install
'ssamba[transformers]'``).

Importing this module registers both architectures with transformers' Auto classes, so that
no ``trust_remote_code`` is needed::

    import ssamba.transformers  # noqa: F401  (registers model_type "ssamba" and "ssast")
    from transformers import AutoModelForAudioClassification, pipeline

    model = AutoModelForAudioClassification.from_pretrained("runs/ft/best")
    classify = pipeline("audio-classification", model="runs/ft/best")
    classify("clip.flac")                     # [{"label": "dog", "score": 0.93}, ...]

One folder serves both worlds. ssamba's ``save_pretrained`` folder (``config.json`` +
``model.safetensors`` + ``preprocessor_config.json``, ``classes.json`` after fine-tuning) is what
transformers loads, and what these classes save is what :func:`ssamba.load_model` loads:

- ``config.json`` holds ssamba's model fields and ``model_type`` (the architecture); the
  transformers config (:class:`SsambaConfig`, :class:`SsastConfig`) is a view of those fields
  that writes them back unchanged, with transformers' own keys (``id2label``, ``problem_type``,
  ``architectures``...) beside them, which ssamba checks and sets aside
  (:meth:`ssamba.models.config.ModelConfig.from_saved`). ``num_classes`` is ``num_labels``;
  without ``id2label``, the class names come from ``classes.json``.
- ``model.safetensors`` holds ssamba's weight names. The transformers models wrap ssamba's own
  :class:`~ssamba.models.model.AudioModel` (the network is not re-implemented) under the
  attribute ``audio``, transformers' ``base_model_prefix``: loading adds the prefix, saving
  takes it off, so the file is the same in both worlds.
- ``preprocessor_config.json`` names :class:`SsambaFeatureExtractor`, a transformers
  ``SequenceFeatureExtractor`` around :class:`ssamba.FeatureExtractor` (the Kaldi fbank and the
  model's normalisation).

Outputs: :class:`SsambaModel` gives ``last_hidden_state`` (batch, class tokens + patches, dim:
the encoder's normalised output; the patch tokens, ``[:, config.num_class_tokens:]``, are
ssamba's ``forward_features``), ``pooler_output`` (ssamba's pooled embedding, ``model(fbank)``
without a head) and, with ``output_hidden_states=True``, ``hidden_states``: the embedded tokens
and every layer's stream (SSAMBA: per layer pair), each (batch, class tokens + patches, dim).
:class:`SsambaForAudioClassification` gives ``logits`` (ssamba's ``model(fbank)``) and, given
``labels``, ``loss``: cross-entropy for ``single_label_classification``, binary cross-entropy
for ``multi_label_classification``, MSE for ``regression`` (when ``problem_type`` is unset it
is inferred from the labels, as transformers' own classifiers do). The inputs are
``input_values``: normalised fbanks (batch, frames, mel bins), what the feature extractor gives.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    BatchFeature,
    PreTrainedModel,
    SequenceFeatureExtractor,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput

from ssamba.constants import CLASSES_FILE
from ssamba.data.manifest import read_class_list
from ssamba.errors import CheckpointError, UsageError
from ssamba.feature_extractor import FeatureExtractor
from ssamba.fileio import atomic_write_json, atomic_write_text
from ssamba.models.config import TRANSFORMERS_KEYS, ModelConfig, preset_config
from ssamba.models.model import AudioModel, EncoderOutput
from ssamba.models.saving import PREPROCESSOR_FILE, preprocessor_config

try:  # transformers >= 5 spells it PreTrainedConfig; 4.x PretrainedConfig
    from transformers import PreTrainedConfig
except ImportError:  # pragma: no cover - older transformers
    from transformers import PretrainedConfig as PreTrainedConfig

__all__ = [
    "SsambaConfig",
    "SsambaFeatureExtractor",
    "SsambaForAudioClassification",
    "SsambaModel",
    "SsastConfig",
    "SsastForAudioClassification",
    "SsastModel",
    "register",
]

# ModelConfig's fields: the part of config.json ssamba owns.
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
# transformers' names for ssamba's fields (attribute_map); num_classes is num_labels.
ALIASES = {"hidden_size": "embed_dim", "num_hidden_layers": "depth"}
PREFIX = "audio"  # the attribute that holds the AudioModel: transformers' base_model_prefix
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
HEAD_LOSS_OF = {"single_label_classification": "ce", "multi_label_classification": "bce"}
PROBLEM_TYPE_OF = {loss: kind for kind, loss in HEAD_LOSS_OF.items()}


# ---------------------------------------------------------------------------- config
class _AudioConfig(PreTrainedConfig):
    """A transformers config that is a view of ssamba's :class:`ModelConfig`: every field of it,
    checked by it, with the defaults of the architecture's tiny preset; ``num_classes`` is
    ``num_labels`` (0 unless labels are given)."""

    attribute_map: ClassVar[dict[str, str]] = {**ALIASES, "num_classes": "num_labels"}

    def __init__(self, **kwargs):
        fields = _model_fields(kwargs, self.model_type)
        num_classes = fields.pop("num_classes", None)
        if kwargs.get("id2label") is None and kwargs.get("num_labels") is None:
            kwargs["num_labels"] = num_classes or 0  # no head unless asked (transformers: 2)
        checked = preset_config(f"{self.model_type}_tiny", **fields)
        for name, value in dataclasses.asdict(checked).items():
            if name != "num_classes":
                setattr(self, name, value)
        super().__init__(**kwargs)
        if self.id2label and not self.label2id:
            self.label2id = {label: i for i, label in self.id2label.items()}
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise UsageError(
                f"problem_type must be one of {', '.join(PROBLEM_TYPES)}, got {self.problem_type!r}"
            )
        # One loss, two names: ssamba's head_loss fixes the scores' activation (ssamba.evaluation.
        # head_scores), transformers' problem_type its pipeline's: each follows the other.
        if self.problem_type in HEAD_LOSS_OF:
            self.head_loss = HEAD_LOSS_OF[self.problem_type]
        elif self.problem_type is None and self.num_labels and "head_loss" in fields:
            self.problem_type = PROBLEM_TYPE_OF[self.head_loss]

    def __eq__(self, other) -> bool:  # the dataclass default would compare transformers' fields
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None

    def model_config(self, num_classes: int | None = None) -> ModelConfig:
        """ssamba's config of this model (``num_classes``: the labels, unless given)."""
        data = {name: getattr(self, name) for name in MODEL_FIELDS if name != "num_classes"}
        data["num_classes"] = (self.num_labels or 0) if num_classes is None else num_classes
        return ModelConfig.from_dict(data)

    @property
    def num_class_tokens(self) -> int:
        """Class tokens ahead of the patch tokens in ``last_hidden_state`` (SSAMBA 1, SSAST 2)."""
        return self.model_config(0).num_class_tokens

    def to_diff_dict(self) -> dict[str, Any]:
        """What ``config.json`` gets: ssamba's fields (all of them, as ssamba writes them) and
        transformers' keys that ssamba knows (:data:`TRANSFORMERS_KEYS`), nothing else."""
        full = super().to_diff_dict()
        kept = {k: full[k] for k in TRANSFORMERS_KEYS if full.get(k) not in (None, {}, [])}
        return {**self.model_config().saved_dict(), **kept}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        kwargs.setdefault("name_or_path", str(pretrained_model_name_or_path))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs):
        """As transformers does, and the class names of a folder fine-tuned by ssamba (its
        ``classes.json``) as ``id2label`` when ``config.json`` has none."""
        config_dict = dict(config_dict)
        source = kwargs.get("name_or_path") or config_dict.get("_name_or_path")
        if not config_dict.get("id2label") and config_dict.get("num_classes") and source:
            names = _class_names(str(source))
            if names is not None:
                if len(names) != config_dict["num_classes"]:
                    raise CheckpointError(
                        f"{source}: {CLASSES_FILE} names {len(names)} classes, but the model "
                        f"has {config_dict['num_classes']}"
                    )
                config_dict["id2label"] = dict(enumerate(names))
        return super().from_dict(config_dict, **kwargs)


def _model_fields(kwargs: dict, model_type: str) -> dict:
    """Take ssamba's fields (and their transformers aliases) out of ``kwargs``; ``arch`` must be
    the config's own architecture."""
    fields = {name: kwargs.pop(name) for name in MODEL_FIELDS if name in kwargs}
    for alias, name in ALIASES.items():
        if alias in kwargs:
            fields[name] = kwargs.pop(alias)
    arch = fields.pop("arch", model_type)
    if arch != model_type:
        raise UsageError(f"a {model_type} config cannot hold arch={arch!r}")
    return fields


def _class_names(source: str) -> list[str] | None:
    """The class names in ``classes.json`` beside a model (a folder, or a Hub repository
    through transformers' cache); None if there is none."""
    path = Path(source) / CLASSES_FILE
    if not Path(source).is_dir():
        from transformers.utils import cached_file

        try:
            found = cached_file(
                source,
                CLASSES_FILE,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except (OSError, ValueError):  # not a Hub id, or not reachable: no class names
            return None
        if found is None:
            return None
        path = Path(found)
    return read_class_list(path)[0] if path.is_file() else None


class SsambaConfig(_AudioConfig):
    """SSAMBA (bidirectional Mamba) as a transformers config; defaults: ``ssamba_tiny``."""

    model_type = "ssamba"

    def __init__(self, **kwargs):  # its own, or transformers makes a dataclass __init__ for it
        super().__init__(**kwargs)


class SsastConfig(_AudioConfig):
    """SSAST (ViT baseline) as a transformers config; defaults: ``ssast_tiny``."""

    model_type = "ssast"
    attribute_map: ClassVar[dict[str, str]] = {
        **_AudioConfig.attribute_map,
        "num_attention_heads": "num_heads",
    }

    def __init__(self, **kwargs):  # its own, or transformers makes a dataclass __init__ for it
        super().__init__(**kwargs)


# ---------------------------------------------------------------------------- models
class _AudioPreTrainedModel(PreTrainedModel):
    """The transformers side of an ssamba model: the AudioModel under ``audio``, saved and
    loaded with ssamba's weight names."""

    base_model_prefix = PREFIX
    main_input_name = "input_values"
    input_modalities = ("audio",)

    def __init__(self, config: _AudioConfig):
        super().__init__(config)
        self.register_load_state_dict_pre_hook(_add_prefix)

    def _wrap(self, config: _AudioConfig, num_classes: int) -> AudioModel:
        """ssamba's network for ``config``. Built for real (not on transformers' meta device
        while loading), its own initialisation stands: marked so that ``post_init`` keeps it."""
        audio = AudioModel(config.model_config(num_classes))
        if not any(t.is_meta for t in audio.state_dict().values()):
            for tensor in audio.state_dict(keep_vars=True).values():
                tensor._is_hf_initialized = True
        return audio

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Weights a checkpoint did not supply (a new classification head...) get ssamba's own
        initialisation: copied from a freshly built AudioModel of the same config."""
        audio = self.__dict__.get("_modules", {}).get(PREFIX)
        owned = {id(m): name for name, m in audio.named_modules()} if audio is not None else {}
        if id(module) not in owned:
            return
        prefix = owned[id(module)] + "." if owned[id(module)] else ""
        own = {**module._parameters, **module._buffers}
        for name, tensor in own.items():
            if tensor is not None and not getattr(tensor, "_is_hf_initialized", False):
                tensor.copy_(self._fresh_state()[prefix + name])

    def _fresh_state(self) -> dict[str, torch.Tensor]:
        """A freshly initialised AudioModel's state_dict, built once per initialisation."""
        if "_fresh" not in self.__dict__:
            with torch.device("cpu"):
                self.__dict__["_fresh"] = AudioModel(self.audio.config).state_dict()
        return self.__dict__["_fresh"]

    def initialize_weights(self) -> None:
        try:
            super().initialize_weights()
        finally:
            self.__dict__.pop("_fresh", None)

    def save_pretrained(self, save_directory, *args, state_dict=None, **kwargs):
        """transformers' save with ssamba's weight names, plus the files ssamba's folder has:
        ``preprocessor_config.json`` and, for named labels, ``classes.json``."""
        state = self.state_dict() if state_dict is None else state_dict
        state = {_strip_prefix(k): v for k, v in state.items()}
        super().save_pretrained(save_directory, *args, state_dict=state, **kwargs)
        if kwargs.get("is_main_process", True):
            _write_ssamba_files(Path(save_directory), self.config)

    def _encode(self, input_values: torch.Tensor, output_hidden_states: bool | None):
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        enc = self.audio.encode(input_values, return_layers=bool(output_hidden_states))
        return enc, (_hidden_states(self.audio, input_values, enc) if enc.layers else None)

    def _return_dict(self, return_dict: bool | None) -> bool:
        return self.config.return_dict if return_dict is None else return_dict


def _strip_prefix(key: str) -> str:
    return key.removeprefix(PREFIX + ".")


def _add_prefix(module, state_dict, prefix, *_args) -> None:
    """``load_state_dict`` with ssamba's weight names (a Trainer resuming from a checkpoint
    folder, a plain torch user): put them under ``audio.``."""
    if prefix:
        return
    for key in [k for k in state_dict if not k.startswith(PREFIX + ".")]:
        state_dict[f"{PREFIX}.{key}"] = state_dict.pop(key)


def _write_ssamba_files(folder: Path, config: _AudioConfig) -> None:
    atomic_write_json(folder / PREPROCESSOR_FILE, preprocessor_config(config.model_config()))
    names = [config.id2label[i] for i in range(config.num_labels or 0)]
    if names and names != [f"LABEL_{i}" for i in range(len(names))]:
        atomic_write_text(folder / CLASSES_FILE, json.dumps(names, indent=1))


def _hidden_states(audio: AudioModel, input_values, enc: EncoderOutput) -> tuple:
    """The embedded tokens and every layer's stream, each (batch, class + patch tokens, dim)."""
    tokens, _ = audio.embed_tokens(input_values)
    return (tokens, *enc.layers)


class _AudioModelBase(_AudioPreTrainedModel):
    """The encoder without a head: ``last_hidden_state``, ``pooler_output``, ``hidden_states``."""

    def __init__(self, config: _AudioConfig):
        super().__init__(config)
        self.audio = self._wrap(config, num_classes=0)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        """``input_values``: normalised fbanks (batch, frames, mel bins). ``attention_mask`` is
        accepted and unused: padding frames are part of the input, as in ssamba's training."""
        enc, hidden = self._encode(input_values, output_hidden_states)
        out = BaseModelOutputWithPooling(
            last_hidden_state=torch.cat([enc.class_tokens, enc.patch_tokens], dim=1),
            pooler_output=self.audio.pool(enc),
            hidden_states=hidden,
        )
        return out if self._return_dict(return_dict) else out.to_tuple()


class _AudioForAudioClassification(_AudioPreTrainedModel):
    """ssamba's fine-tuning model: pooled tokens -> LayerNorm + Linear head -> ``logits``."""

    def __init__(self, config: _AudioConfig):
        super().__init__(config)
        if not config.num_labels:
            raise UsageError(
                f"{type(self).__name__} needs labels: pass num_labels=N or id2label={{...}} "
                "(the checkpoint has no classification head)"
            )
        self.audio = self._wrap(config, num_classes=config.num_labels)
        self.post_init()

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ):
        """``labels``: class indices (batch,) for single-label, 0/1 targets (batch, classes) for
        multi-label, values for regression. ``attention_mask`` is accepted and unused."""
        enc, hidden = self._encode(input_values, output_hidden_states)
        logits = self.audio.mlp_head(self.audio.pool(enc))
        loss = None if labels is None else self._loss(logits, labels)
        out = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden)
        return out if self._return_dict(return_dict) else out.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss ``problem_type`` names; unset, it is inferred once from the labels (one
        output: regression; integer labels: single-label; else multi-label)."""
        if self.config.problem_type is None:
            if self.config.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        kind = self.config.problem_type
        if kind == "single_label_classification":
            return nn.functional.cross_entropy(logits, labels.view(-1).long())
        if kind == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).squeeze(-1))


class SsambaModel(_AudioModelBase):
    """SSAMBA's encoder as a transformers model (``AutoModel``)."""

    config_class = SsambaConfig


class SsambaForAudioClassification(_AudioForAudioClassification):
    """SSAMBA with its classification head (``AutoModelForAudioClassification``)."""

    config_class = SsambaConfig


class SsastModel(_AudioModelBase):
    """SSAST's encoder as a transformers model (``AutoModel``)."""

    config_class = SsastConfig


class SsastForAudioClassification(_AudioForAudioClassification):
    """SSAST with its classification head (``AutoModelForAudioClassification``)."""

    config_class = SsastConfig


# ---------------------------------------------------------------------------- features
class SsambaFeatureExtractor(SequenceFeatureExtractor):
    """:class:`ssamba.FeatureExtractor` as a transformers ``SequenceFeatureExtractor`` (both
    architectures use it): the same ``preprocessor_config.json``, the same features. Waveforms
    at any ``sampling_rate`` are resampled to 16 kHz; ``input_values`` are normalised fbanks
    padded or cut to ``max_length`` frames (``padding="longest"``: to the longest clip)."""

    model_input_names: ClassVar[list[str]] = ["input_values", "attention_mask"]

    def __init__(self, **kwargs):
        for name in ("processor_class", "padding_side"):  # transformers' own, nothing to do here
            kwargs.pop(name, None)
        frontend = FeatureExtractor.from_dict(kwargs)  # its defaults and its checks
        fields = dataclasses.asdict(frontend)
        super().__init__(
            feature_size=fields.pop("feature_size"),
            sampling_rate=fields.pop("sampling_rate"),
            padding_value=fields.pop("padding_value"),
            return_attention_mask=fields.pop("return_attention_mask"),
        )
        for name, value in fields.items():
            setattr(self, name, value)

    def frontend(self) -> FeatureExtractor:
        """ssamba's feature extractor with this one's current settings."""
        names = (f.name for f in dataclasses.fields(FeatureExtractor))
        return FeatureExtractor(**{name: getattr(self, name) for name in names})

    def to_dict(self) -> dict[str, Any]:
        """Exactly what ssamba writes to ``preprocessor_config.json``."""
        return self.frontend().to_dict()

    def __call__(
        self,
        raw_speech,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        padding: str = "max_length",
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """One waveform, a batch or a list of them -> ``input_values`` (and ``attention_mask``
        when asked for); ``sampling_rate`` is required (other rates are resampled)."""
        unknown = sorted(kwargs)
        if unknown:
            raise UsageError(f"SsambaFeatureExtractor: unknown argument(s) {', '.join(unknown)}")
        out = self.frontend()(
            raw_speech,
            sampling_rate=sampling_rate,
            padding=padding,
            return_attention_mask=return_attention_mask,
        )
        out.pop("lengths")
        return BatchFeature(out, tensor_type=return_tensors)


# ---------------------------------------------------------------------------- registration
PAIRS = (
    (SsambaConfig, SsambaModel, SsambaForAudioClassification),
    (SsastConfig, SsastModel, SsastForAudioClassification),
)


def register() -> None:
    """Register both architectures with AutoConfig, AutoModel, AutoModelForAudioClassification
    and AutoFeatureExtractor (done on import; again is harmless)."""
    for config, base, classifier in PAIRS:
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, base, exist_ok=True)
        AutoModelForAudioClassification.register(config, classifier, exist_ok=True)
        AutoFeatureExtractor.register(config, SsambaFeatureExtractor, exist_ok=True)


register()

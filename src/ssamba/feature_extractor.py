"""A feature extractor object, as transformers users know it (``ASTFeatureExtractor``'s fields).

Python::

    fe = ssamba.FeatureExtractor.from_pretrained("runs/ft/best")   # the model's own statistics
    batch = fe([wave_a, wave_b], sampling_rate=44100)              # resampled to 16 kHz
    batch["input_values"]        # (2, max_length, 128) normalised fbank, padded
    batch["lengths"]             # (2,) real frames of each clip
    model(batch["input_values"])

Its settings are those of ``preprocessor_config.json`` (written beside every saved model by
:func:`ssamba.models.saving.save_pretrained`), with the field names of transformers' AST feature
extractor: ``sampling_rate``, ``num_mel_bins``, ``max_length``, ``mean``, ``std``,
``do_normalize``, ``padding_value``, ``return_attention_mask``; its ``feature_extractor_type`` is
``SsambaFeatureExtractor``, the transformers class :mod:`ssamba.transformers` registers, which
wraps this one (folders written before it say ``ASTFeatureExtractor`` and still load here).
The features are exactly those of :func:`ssamba.fbank` followed by the model's normalisation
``(fbank - mean) / (2 * std)``, with padding added before the normalisation, as the reference
data loader and ``ssamba.embed`` do.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssamba.audio import fbank_frames, input_batch, waveforms
from ssamba.checkpoints import official_config, read_official, resolve_checkpoint
from ssamba.constants import NUM_MEL_BINS, SAMPLE_RATE
from ssamba.errors import CheckpointError, UsageError
from ssamba.fileio import atomic_write_json
from ssamba.models.config import ModelConfig, preset_config
from ssamba.models.saving import (
    CONFIG_FILE,
    FEATURE_EXTRACTOR_TYPE,
    LEGACY_FEATURE_EXTRACTOR_TYPE,
    PREPROCESSOR_FILE,
    preprocessor_config,
)

__all__ = ["PADDINGS", "FeatureExtractor"]

PADDINGS = ("max_length", "longest")


@dataclass
class FeatureExtractor:
    """Waveforms -> a normalised fbank batch with lengths (see the module docstring)."""

    sampling_rate: int = SAMPLE_RATE
    num_mel_bins: int = NUM_MEL_BINS
    max_length: int = 1024  # frames every clip is padded or cut to (padding="max_length")
    mean: float = -4.2677393  # AudioSet statistics unless the model was trained with others
    std: float = 4.5689974
    do_normalize: bool = True
    padding_value: float = 0.0  # the fbank value of padding frames, before normalisation
    return_attention_mask: bool = False
    feature_size: int = 1  # transformers' field: one channel of audio

    def __post_init__(self):
        if self.sampling_rate != SAMPLE_RATE:
            raise UsageError(
                f"sampling_rate must be {SAMPLE_RATE} (the models' rate; other input rates are "
                f"resampled), got {self.sampling_rate}"
            )
        if self.max_length < 1 or self.num_mel_bins < 1:
            raise UsageError("max_length and num_mel_bins must be positive")
        if not self.std > 0:
            raise UsageError(f"std must be > 0, got {self.std}")

    # ------------------------------------------------------------------ configuration
    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` contents."""
        return {"feature_extractor_type": FEATURE_EXTRACTOR_TYPE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureExtractor:
        """From ``preprocessor_config.json`` contents; fields of other extractors are refused."""
        data = dict(data)
        kind = data.pop("feature_extractor_type", FEATURE_EXTRACTOR_TYPE)
        if kind not in (FEATURE_EXTRACTOR_TYPE, LEGACY_FEATURE_EXTRACTOR_TYPE):
            raise UsageError(
                f"not an ssamba feature extractor config: feature_extractor_type={kind} "
                f"(expected {FEATURE_EXTRACTOR_TYPE} or {LEGACY_FEATURE_EXTRACTOR_TYPE})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown feature extractor fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_config(cls, config: ModelConfig) -> FeatureExtractor:
        """The front end a model config expects (its input length and statistics)."""
        return cls.from_dict(preprocessor_config(config))

    @classmethod
    def from_model(cls, model) -> FeatureExtractor:
        """The front end an :class:`~ssamba.models.AudioModel` expects."""
        return cls.from_config(model.config)

    @classmethod
    def from_pretrained(cls, source: str | Path) -> FeatureExtractor:
        """From a model folder's ``preprocessor_config.json`` (else its ``config.json``), an
        official ``.pth`` (its input size; AudioSet statistics, which the released models use),
        or any name :func:`ssamba.load_model` accepts (released checkpoint, Hub id, preset)."""
        where = resolve_checkpoint(source)
        if isinstance(where, str):  # a preset: its default front end
            return cls.from_config(preset_config(where))
        if where.is_dir():
            return cls._from_folder(where)
        state = read_official(where)
        return cls.from_config(official_config(state, str(where))[0])

    @classmethod
    def _from_folder(cls, folder: Path) -> FeatureExtractor:
        for name in (PREPROCESSOR_FILE, CONFIG_FILE):
            path = folder / name
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise CheckpointError(f"{path}: unreadable ({err})") from None
            if name == PREPROCESSOR_FILE:
                return cls.from_dict(data)
            return cls.from_config(ModelConfig.from_saved(data))
        raise CheckpointError(f"{folder}: neither {PREPROCESSOR_FILE} nor {CONFIG_FILE} found")

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``preprocessor_config.json`` into ``folder`` (atomically); its path."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / PREPROCESSOR_FILE, self.to_dict())
        return folder / PREPROCESSOR_FILE

    # ------------------------------------------------------------------ features
    def __call__(
        self,
        raw_speech: Any,
        sampling_rate: int | None = None,
        *,
        padding: str = "max_length",
        return_attention_mask: bool | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features of one waveform (1-D), a batch ``(n, samples)`` or a list of waveforms.

        ``padding="max_length"`` pads or cuts every clip to ``max_length`` frames (what the
        model was trained on); ``"longest"`` pads to the longest clip and cuts nothing.
        Returns ``input_values`` (B, T, num_mel_bins) float32, ``lengths`` (B,) real frames per
        clip, and ``attention_mask`` (B, T) of 1s on real frames when asked for."""
        if padding not in PADDINGS:
            raise UsageError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        if sampling_rate is None:
            raise UsageError(
                "pass the waveforms' sampling_rate (e.g. fe(wave, sampling_rate=16000)); "
                "other rates are resampled to 16 kHz"
            )
        waves, _ = waveforms(raw_speech, int(sampling_rate))
        feats = [fbank_frames(w, self.num_mel_bins) for w in waves]
        lengths = [f.shape[0] for f in feats]
        target = self.max_length if padding == "max_length" else max(max(lengths), 1)
        stats = (self.mean, self.std) if self.do_normalize else None
        values = input_batch(feats, target, stats, self.padding_value)
        out = {
            "input_values": values,
            "lengths": torch.tensor([min(n, target) for n in lengths], dtype=torch.long),
        }
        if self.return_attention_mask if return_attention_mask is None else return_attention_mask:
            frames = torch.arange(target)
            out["attention_mask"] = (frames[None, :] < out["lengths"][:, None]).long()
        return out

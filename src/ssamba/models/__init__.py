"""Model definitions: configs and presets, patches, the Mamba and ViT encoders, AudioModel.

Loaded lazily (PEP 562): ``ssamba.models.config`` imports without torch, so the command line can
show preset names and defaults quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC = {
    "AudioModel": "ssamba.models.model",
    "EncoderOutput": "ssamba.models.model",
    "create_model": "ssamba.models.model",
    "ModelConfig": "ssamba.models.config",
    "list_models": "ssamba.models.config",
    "preset_config": "ssamba.models.config",
}

__all__ = [
    "AudioModel",
    "EncoderOutput",
    "ModelConfig",
    "create_model",
    "list_models",
    "preset_config",
]

if TYPE_CHECKING:  # pragma: no cover
    from ssamba.models.config import ModelConfig, list_models, preset_config
    from ssamba.models.model import AudioModel, EncoderOutput, create_model


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ssamba.models' has no attribute {name!r}")

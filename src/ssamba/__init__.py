"""ssamba: self-supervised audio representation learning with bidirectional Mamba (and SSAST).

The public surface is below. It is loaded on first use (PEP 562), so ``import ssamba`` and
``ssamba --help`` cost nothing until a function or class is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_PUBLIC = {
    "AudioModel": "ssamba.models.model",
    "ModelConfig": "ssamba.models.config",
    "create_model": "ssamba.models.model",
    "list_models": "ssamba.models.config",
    "load_model": "ssamba.checkpoints",
    "Embeddings": "ssamba.embeddings",
    "embed": "ssamba.embeddings",
    "fbank": "ssamba.audio",
    "load_audio": "ssamba.audio",
    "FeatureExtractor": "ssamba.feature_extractor",
    "RELEASES": "ssamba.models.config",
    "export_model": "ssamba.export",
}

__all__ = [
    "RELEASES",
    "AudioModel",
    "Embeddings",
    "FeatureExtractor",
    "ModelConfig",
    "__version__",
    "create_model",
    "embed",
    "export_model",
    "fbank",
    "list_models",
    "load_audio",
    "load_model",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from ssamba.audio import fbank, load_audio
    from ssamba.checkpoints import load_model
    from ssamba.embeddings import Embeddings, embed
    from ssamba.export import export_model
    from ssamba.feature_extractor import FeatureExtractor
    from ssamba.models.config import RELEASES, ModelConfig, list_models
    from ssamba.models.model import AudioModel, create_model


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'ssamba' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

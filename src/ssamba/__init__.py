"""ssamba: self-supervised audio representation learning with bidirectional Mamba (and SSAST)."""

from ssamba.audio import fbank, load_audio
from ssamba.checkpoints import load_model
from ssamba.embed import Embeddings, embed
from ssamba.models import AudioModel, ModelConfig, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "AudioModel",
    "Embeddings",
    "ModelConfig",
    "__version__",
    "create_model",
    "embed",
    "fbank",
    "list_models",
    "load_audio",
    "load_model",
]

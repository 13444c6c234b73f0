"""Model definitions: configs and presets, patches, the Mamba and ViT encoders, AudioModel."""

from ssamba.models.config import ModelConfig, list_models, preset_config
from ssamba.models.model import AudioModel, EncoderOutput, create_model

__all__ = [
    "AudioModel",
    "EncoderOutput",
    "ModelConfig",
    "create_model",
    "list_models",
    "preset_config",
]

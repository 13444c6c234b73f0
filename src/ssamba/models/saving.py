"""Our own checkpoint format: a folder with ``config.json``, ``model.safetensors`` and
``preprocessor_config.json``, and the strict loading of a state_dict into a model.

Nothing here is pickled: weights are safetensors, the config is JSON. The functions take a model
instance rather than the class, so the model module can use them without an import circle;
official ``.pth`` files are converted by :mod:`ssamba.checkpoints`, a layer above.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ssamba.constants import SAMPLE_RATE
from ssamba.errors import CheckpointError
from ssamba.fileio import atomic_write, atomic_write_json, atomic_write_text
from ssamba.models.config import ModelConfig
from ssamba.models.patches import resize_pos_embed

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
# feature_extractor_type in preprocessor_config.json: the class transformers' AutoFeatureExtractor
# builds (registered by ssamba.transformers); folders written before it say the legacy name.
FEATURE_EXTRACTOR_TYPE = "SsambaFeatureExtractor"
LEGACY_FEATURE_EXTRACTOR_TYPE = "ASTFeatureExtractor"
HEAD_KEYS = re.compile(r"^(mask_embed|cpredlayer\.|gpredlayer\.)")
# Settings that decide the shapes of the weights: an override may not change them.
STRUCTURAL = ("arch", "embed_dim", "depth", "num_heads", "d_state", "d_conv", "expand", "dt_rank")


def apply_overrides(config: ModelConfig, overrides: dict, source: str) -> ModelConfig:
    for name in STRUCTURAL:
        if name in overrides and overrides[name] != getattr(config, name):
            raise CheckpointError(
                f"{source}: {name}={overrides[name]!r} conflicts with the weights ({name}="
                f"{getattr(config, name)!r})"
            )
    data = {**config.__dict__, **overrides}
    return ModelConfig.from_dict(data)


def load_weights(model, state: dict, source_grid: tuple, source: str) -> None:
    """Strictly load ``state`` (our key names) into ``model``, adapting what the config changes.

    Adapted on purpose: the positional embedding to the model's patch grid; a classification head
    or pretraining heads the model does not have are dropped (with a log line), and a new head
    the checkpoint lacks stays freshly initialised. Anything else that does not match is an error.
    """
    state = dict(state)
    cfg = model.config
    n_cls = cfg.num_class_tokens
    if "pos_embed" in state and source_grid != cfg.grid:
        pos = state["pos_embed"]
        state["pos_embed"] = torch.cat(
            [pos[:, :n_cls], resize_pos_embed(pos[:, n_cls:], source_grid, cfg.grid)], dim=1
        )
    expected = model.state_dict()
    notes = []
    if not cfg.pretrain_heads and any(HEAD_KEYS.match(k) for k in state):
        state = {k: v for k, v in state.items() if not HEAD_KEYS.match(k)}
        notes.append("pretraining heads dropped")
    ckpt_head = {k: v for k, v in state.items() if k.startswith("mlp_head.")}
    model_head = {k for k in expected if k.startswith("mlp_head.")}
    head_mismatch = bool(ckpt_head) and (
        set(ckpt_head) != model_head
        or any(v.shape != expected[k].shape for k, v in ckpt_head.items())
    )
    if head_mismatch or (ckpt_head and not model_head):
        state = {k: v for k, v in state.items() if not k.startswith("mlp_head.")}
        notes.append("classification head dropped (different number of classes)")
    if model_head and not any(k.startswith("mlp_head.") for k in state):
        state.update({k: expected[k] for k in model_head})
        notes.append(f"new {cfg.num_classes}-class head initialised")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        lines = [f"{source}: the checkpoint does not match the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                shown = ", ".join(items[:12]) + (
                    f", ... ({len(items)} in all)" if len(items) > 12 else ""
                )
                lines.append(f"  {title} keys: {shown}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    for note in notes:
        log.info("%s: %s", source, note)


def preprocessor_config(config: ModelConfig) -> dict:
    """Front-end settings with the field names of transformers' AST feature extractor."""
    return {
        "feature_extractor_type": FEATURE_EXTRACTOR_TYPE,
        "feature_size": 1,
        "num_mel_bins": config.num_mel_bins,
        "max_length": config.input_tdim,
        "sampling_rate": SAMPLE_RATE,
        "padding_value": 0.0,
        "do_normalize": True,
        "mean": config.norm_mean,
        "std": config.norm_std,
        "return_attention_mask": False,
    }


def save_pretrained(model, folder: str | Path) -> Path:
    """Write ``model`` as a folder; each file is replaced atomically, the config last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(
        folder / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"})
    )
    atomic_write_json(folder / PREPROCESSOR_FILE, preprocessor_config(model.config))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(model.config.saved_dict(), indent=2))
    return folder


def read_pretrained(folder: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The saved config and state_dict of a :func:`save_pretrained` folder."""
    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: {name} is missing (not a save_pretrained folder)")
    try:
        saved = ModelConfig.from_saved(json.loads((folder / CONFIG_FILE).read_text()))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE}: invalid model config ({err})") from None
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: unreadable ({err})") from None
    return saved, state

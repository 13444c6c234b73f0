"""Checkpoints: official SSAMBA/SSAST ``.pth`` files and our own ``config.json`` + safetensors.

Official files are read with ``torch.load(weights_only=True)`` only (never a pickle of code).
Key mismatches are never ignored: a readable report lists missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

import torch

from ssamba.models.config import PATCH, SIZES, ModelConfig, patch_grid, preset_config
from ssamba.models.model import AudioModel
from ssamba.models.patches import resize_pos_embed

log = logging.getLogger(__name__)

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Official keys that no forward pass uses (timm/Vim classifier heads): dropped on load.
UNUSED_OFFICIAL = re.compile(r"^v\.head(_dist)?\.")
HEAD_KEYS = re.compile(r"^(mask_embed|cpredlayer\.|gpredlayer\.)")
STRUCTURAL = ("arch", "embed_dim", "depth", "num_heads", "d_state", "d_conv", "expand", "dt_rank")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why."""


# ---------------------------------------------------------------------------- official files
_OFFICIAL_TO_OURS = [
    (r"^v\.patch_embed\.", "patch_embed."),
    (r"^v\.(cls_token|dist_token|pos_embed)$", r"\1"),
    (
        r"^v\.layers\.(\d+)\.mixer\.(conv1d|x_proj|dt_proj)_b\.",
        r"encoder.layers.\1.mixer.backward_branch.\2.",
    ),
    (r"^v\.layers\.(\d+)\.mixer\.A_b_log$", r"encoder.layers.\1.mixer.backward_branch.A_log"),
    (r"^v\.layers\.(\d+)\.mixer\.D_b$", r"encoder.layers.\1.mixer.backward_branch.D"),
    (
        r"^v\.layers\.(\d+)\.mixer\.(conv1d|x_proj|dt_proj)\.",
        r"encoder.layers.\1.mixer.forward_branch.\2.",
    ),
    (r"^v\.layers\.(\d+)\.mixer\.(A_log|D)$", r"encoder.layers.\1.mixer.forward_branch.\2"),
    (r"^v\.", "encoder."),
]


def official_to_ours(key: str) -> str:
    for pattern, repl in _OFFICIAL_TO_OURS:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """An official state_dict (DataParallel 'module.' prefix or not), safely unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: not a readable PyTorch state_dict ({err})") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def official_config(
    state: dict, source: str = "checkpoint", **overrides
) -> tuple[ModelConfig, tuple]:
    """The model config an official state_dict implies, plus the patch grid its weights are for."""
    if "v.layers.0.mixer.in_proj.weight" in state:
        arch, prefix = "ssamba", "v.layers."
    elif "v.blocks.0.attn.qkv.weight" in state:
        arch, prefix = "ssast", "v.blocks."
    else:
        raise CheckpointError(f"{source}: neither an SSAMBA nor an SSAST state_dict")
    if "v.patch_embed.proj.weight" not in state or "v.pos_embed" not in state:
        raise CheckpointError(f"{source}: patch embedding or positional embedding missing")
    dim = state["v.patch_embed.proj.weight"].shape[0]
    depth = 1 + max(int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix))
    fields: dict = dict(arch=arch, embed_dim=dim, depth=depth)
    if arch == "ssamba":
        a_log = _need(state, "v.layers.0.mixer.A_log", source)
        fields["bidirectional"] = "v.layers.0.mixer.A_b_log" in state
        fields["d_state"] = a_log.shape[1]
        fields["expand"] = a_log.shape[0] // dim
        fields["dt_rank"] = _need(state, "v.layers.0.mixer.dt_proj.weight", source).shape[1]
        fields["d_conv"] = _need(state, "v.layers.0.mixer.conv1d.weight", source).shape[-1]
        if "v.layers.0.norm.bias" not in state:
            fields["norm"] = "rmsnorm"
    else:
        heads = {d: h for d, h in SIZES.values()}.get(dim)
        fields["num_heads"] = overrides.pop("num_heads", None) or heads or max(1, dim // 64)
        fields["drop_path"] = 0.0
    fields["pretrain_heads"] = "cpredlayer.0.weight" in state
    if "mlp_head.1.weight" in state:
        fields["num_classes"] = state["mlp_head.1.weight"].shape[0]
    n_cls = 1 if arch == "ssamba" else 2
    n_patches = state["v.pos_embed"].shape[1] - n_cls

    if "p_input_fdim" in state:  # a pretraining checkpoint: non-overlapping patches
        pf, pt = int(state["p_input_fdim"]), int(state["p_input_tdim"])
        grid = patch_grid(pf, pt, PATCH, PATCH)
        fields.update(
            pretrain_fdim=pf, pretrain_tdim=pt, input_tdim=pt, fstride=PATCH, tstride=PATCH
        )
    else:  # fine-tuned: the stride is not stored; take it from overrides or infer it
        fstride = overrides.get("fstride") or _infer_stride(n_patches, source)
        tstride = overrides.get("tstride") or fstride
        f_dim = (128 - PATCH) // fstride + 1
        if n_patches % f_dim:
            raise CheckpointError(
                f"{source}: {n_patches} patch positions do not fit frequency stride {fstride}"
            )
        grid = (f_dim, n_patches // f_dim)
        fields.update(fstride=fstride, tstride=tstride, input_tdim=(grid[1] - 1) * tstride + PATCH)
    if grid[0] * grid[1] != n_patches:
        raise CheckpointError(
            f"{source}: positional embedding has {n_patches} patches, but the stored input size "
            f"implies a {grid[0]}x{grid[1]} grid"
        )
    return _apply_overrides(ModelConfig(**fields), overrides, source), grid


def _need(state: dict, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: key {key} is missing")
    return state[key]


def _infer_stride(n_patches: int, source: str) -> int:
    for stride in (10, 16, 8, 12, 6, 14, 4, 2, 1):  # common recipes first
        if n_patches % ((128 - PATCH) // stride + 1) == 0:
            return stride
    raise CheckpointError(f"{source}: cannot infer the patch stride; pass fstride=/tstride=")


def _apply_overrides(config: ModelConfig, overrides: dict, source: str) -> ModelConfig:
    for name in STRUCTURAL:
        if name in overrides and overrides[name] != getattr(config, name):
            raise CheckpointError(
                f"{source}: {name}={overrides[name]!r} conflicts with the weights ({name}="
                f"{getattr(config, name)!r})"
            )
    data = {**config.__dict__, **overrides}
    return ModelConfig.from_dict(data)


def convert_official(state: dict) -> dict[str, torch.Tensor]:
    """Rename official keys to ours; drop the unused classifier heads and stored input sizes."""
    out = {}
    for key, value in state.items():
        if UNUSED_OFFICIAL.match(key) or key in ("p_input_fdim", "p_input_tdim"):
            continue
        out[official_to_ours(key)] = value
    return out


# ---------------------------------------------------------------------------- loading into a model
def load_weights(model: AudioModel, state: dict, source_grid: tuple, source: str) -> None:
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


def load_official(path: str | Path, **overrides) -> AudioModel:
    state = read_official(path)
    config, grid = official_config(state, str(path), **overrides)
    model = AudioModel(config)
    load_weights(model, convert_official(state), grid, str(path))
    return model.eval()


# ---------------------------------------------------------------------------- our own format
def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def preprocessor_config(config: ModelConfig) -> dict:
    """Front-end settings with the field names of transformers' AST feature extractor."""
    return {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "num_mel_bins": config.num_mel_bins,
        "max_length": config.input_tdim,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "do_normalize": True,
        "mean": config.norm_mean,
        "std": config.norm_std,
        "return_attention_mask": False,
    }


def save_pretrained(model: AudioModel, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(
        folder / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"})
    )
    pre = json.dumps(preprocessor_config(model.config), indent=2)
    _atomic_write(folder / PREPROCESSOR_FILE, lambda tmp: Path(tmp).write_text(pre))
    cfg = model.config.to_json()
    _atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(cfg))
    return folder


def load_pretrained(folder: str | Path, **overrides) -> AudioModel:
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: {name} is missing (not a save_pretrained folder)")
    try:
        saved = ModelConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{folder / CONFIG_FILE}: invalid model config ({err})") from None
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise CheckpointError(f"{folder / WEIGHTS_FILE}: unreadable ({err})") from None
    config = _apply_overrides(saved, overrides, str(folder))
    model = AudioModel(config)
    load_weights(model, state, saved.grid, str(folder))
    return model.eval()


def load_model(path_or_name: str | Path, **overrides) -> AudioModel:
    """A model from a preset name, a ``save_pretrained`` folder or an official ``.pth`` file.

    Official files: kind, size, depth and pretraining input size are read from the weights;
    ``fstride``, ``tstride``, ``input_tdim``, ``num_classes``... may be overridden (the positional
    embedding is resized to the new patch grid by the official rule).
    """
    path = Path(path_or_name)
    if path.is_dir():
        return load_pretrained(path, **overrides)
    if path.is_file():
        return load_official(path, **overrides)
    name = str(path_or_name)
    if "/" not in name and "\\" not in name and not path.suffix:
        return AudioModel(preset_config(name, **overrides))
    raise CheckpointError(f"{path}: no such file or folder")

"""Checkpoints: official SSAMBA/SSAST ``.pth`` files and our own ``config.json`` + safetensors.

Official files are read with ``torch.load(weights_only=True)`` only (never a pickle of code).
Key mismatches are never ignored: a readable report lists missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path

import torch

from ssamba.audio import normalize_stats
from ssamba.constants import PATCH
from ssamba.errors import CheckpointError, UsageError, closest_name
from ssamba.models.config import (
    PRESETS,
    RELEASES,
    SIZES,
    ModelConfig,
    Release,
    list_models,
    patch_grid,
    preset_config,
)
from ssamba.models.model import AudioModel
from ssamba.models.saving import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    apply_overrides,
    load_weights,
    read_pretrained,
    save_pretrained,
)

__all__ = [
    "CONFIG_FILE",
    "HOME_ENV",
    "WEIGHTS_FILE",
    "CheckpointError",
    "RandomWeightsWarning",
    "convert_official",
    "hub_download",
    "hub_file",
    "is_hub_file",
    "is_hub_id",
    "load_model",
    "load_official",
    "load_pretrained",
    "model_stats",
    "official_config",
    "read_official",
    "released_checkpoint",
    "resolve_checkpoint",
    "save_pretrained",
    "ssamba_home",
]

# Official keys that no forward pass uses (timm/Vim classifier heads): dropped on load.
UNUSED_OFFICIAL = re.compile(r"^v\.head(_dist)?\.")


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


def _load_failure(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` failed, in one line and without torch's advice to
    retry with ``weights_only=False`` (that runs whatever code the pickle holds)."""
    text = str(err)
    if not (isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text):
        return f"not a readable PyTorch state_dict ({' '.join(text.split())})"
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:  # a reference to a class or function: objects beyond tensors, maybe code
        return (
            f"refused: the file holds pickled Python objects, not only tensors (it references "
            f"{found.group(1)}); ssamba loads plain state_dicts only, since unpickling objects "
            "can run code"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", text,
                       re.S)  # fmt: skip
    reason = " ".join(detail.group(1).split()) if detail else "not a pickle of tensors"
    return f"not a readable PyTorch state_dict ({reason})"


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """An official state_dict (DataParallel 'module.' prefix or not), safely unpickled."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"{path}: {_load_failure(err)}") from None
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
    return apply_overrides(ModelConfig(**fields), overrides, source), grid


def _need(state: dict, key: str, source: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{source}: key {key} is missing")
    return state[key]


def _infer_stride(n_patches: int, source: str) -> int:
    for stride in (10, 16, 8, 12, 6, 14, 4, 2, 1):  # common recipes first
        if n_patches % ((128 - PATCH) // stride + 1) == 0:
            return stride
    raise CheckpointError(f"{source}: cannot infer the patch stride; pass fstride=/tstride=")


def convert_official(state: dict) -> dict[str, torch.Tensor]:
    """Rename official keys to ours; drop the unused classifier heads and stored input sizes."""
    out = {}
    for key, value in state.items():
        if UNUSED_OFFICIAL.match(key) or key in ("p_input_fdim", "p_input_tdim"):
            continue
        out[official_to_ours(key)] = value
    return out


def load_official(path: str | Path, **overrides) -> AudioModel:
    state = read_official(path)
    config, grid = official_config(state, str(path), **overrides)
    model = AudioModel(config)
    load_weights(model, convert_official(state), grid, str(path))
    return model.eval()


def load_pretrained(folder: str | Path, **overrides) -> AudioModel:
    """A model from a :func:`save_pretrained` folder (``overrides`` as in :func:`load_model`)."""
    return AudioModel.from_pretrained(folder, **overrides)


# ---------------------------------------------------------------------------- by name
HOME_ENV = "SSAMBA_HOME"  # the folder released checkpoints are looked up in
# A Hugging Face Hub repository id, "org/name", optionally "@revision".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")
# Something inside a Hub repository: "hf://org/name[@revision][/path/in/the/repository]".
HUB_SCHEME = "hf://"
_HUB_FILE = re.compile(
    r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[^/]+))?"
    r"(?:/(?P<path>.*?))?/?$"
)


class RandomWeightsWarning(UserWarning):
    """A model was built from a preset name: its weights are random, its outputs meaningless."""


def ssamba_home() -> Path:
    """Where released checkpoints are looked for: ``$SSAMBA_HOME``, else ``~/.cache/ssamba``."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "ssamba").expanduser()


def released_checkpoint(name: str) -> Path:
    """The local copy of a released official checkpoint (``list_models(pretrained=True)``):
    ``<home>/<name>/`` (a converted folder) or ``<home>/<file name>``; else a CheckpointError
    that says which file to put where."""
    release: Release = RELEASES[name]
    home = ssamba_home()
    folder, file = home / name, home / release.filename
    if (folder / CONFIG_FILE).is_file():
        return folder
    if file.is_file():
        return file
    raise CheckpointError(
        f"{name}: the released checkpoint is not on this machine. Download {release.filename} "
        f"({release.size}, {release.masked_patches} masked patches) and put it at {file} "
        f"(set ${HOME_ENV} to use another folder); {release.source}"
    )


def is_hub_id(spec: str) -> bool:
    """Whether ``spec`` reads as a Hugging Face Hub id (``org/name[@revision]``) rather than a
    local path: one slash, no file suffix, nothing that exists on disk."""
    name = spec.split("@", 1)[0]
    return bool(_HUB_ID.match(spec)) and not Path(name).suffix and not Path(spec).exists()


def _hub(spec: str):
    """The optional ``huggingface_hub`` package, or a UsageError saying how to install it."""
    try:
        import huggingface_hub
    except ImportError:
        raise UsageError(
            f"{spec}: no such file or folder here; as a Hugging Face Hub name it needs the "
            "optional huggingface_hub package: pip install 'ssamba[hub]'"
        ) from None
    return huggingface_hub


def _hub_failure(spec: str, err: Exception) -> CheckpointError:
    message = " ".join(str(err).split())
    return CheckpointError(
        f"{spec}: no such file or folder here, nor from the Hugging Face Hub ({message})"
    )


def hub_download(repo_id: str) -> Path:
    """``org/name[@revision]`` from the Hugging Face Hub into its cache (the optional
    ``huggingface_hub`` package; ``HF_HUB_OFFLINE=1`` uses the cache only); the local folder."""
    hub = _hub(repo_id)
    repo, _, revision = repo_id.partition("@")
    try:
        return Path(hub.snapshot_download(repo, revision=revision or None))
    except Exception as err:  # offline without a cached copy, unknown repo, network errors...
        raise _hub_failure(repo_id, err) from None


def is_hub_file(spec: str | Path) -> bool:
    """Whether ``spec`` names something inside a Hub repository: ``hf://org/name/...``."""
    return str(spec).startswith(HUB_SCHEME)


def hub_file(spec: str) -> Path:
    """The local copy of ``hf://org/name[@revision][/path]``, through huggingface_hub's cache
    (``HF_HUB_OFFLINE=1`` uses the cache only): a file (an official ``.pth``, a safetensors...),
    a folder inside the repository (``save_pretrained`` layout), or with no path the
    repository's model as for ``org/name``."""
    found = _HUB_FILE.match(spec)
    if not found:
        raise CheckpointError(
            f"{spec}: not a Hub file name; expected hf://ORG/NAME[@REVISION][/PATH], e.g. "
            "hf://org/name/model.pth"
        )
    repo, revision, inner = found["repo"], found["revision"], found["path"]
    if not inner:
        return _weights_in(hub_download(repo + (f"@{revision}" if revision else "")), spec)
    hub = _hub(spec)
    try:
        if Path(inner).suffix:
            return Path(hub.hf_hub_download(repo, inner, revision=revision))
        root = hub.snapshot_download(repo, revision=revision, allow_patterns=[f"{inner}/*"])
    except Exception as err:  # offline without a cached copy, no such file, network errors...
        raise _hub_failure(spec, err) from None
    folder = Path(root) / inner
    if not folder.is_dir():
        raise CheckpointError(f"{spec}: the repository has no file or folder {inner!r}")
    return _weights_in(folder, spec)


def _weights_in(folder: Path, source: str) -> Path:
    """The model a downloaded repository holds: our folder format, else its one .pth file."""
    if (folder / CONFIG_FILE).is_file():
        return folder
    pth = sorted(folder.glob("*.pth")) + sorted(folder.glob("*.pt"))
    if len(pth) == 1:
        return pth[0]
    raise CheckpointError(
        f"{source}: expected {CONFIG_FILE} + {WEIGHTS_FILE} or one official .pth file, found "
        f"{', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'}"
    )


def resolve_checkpoint(spec: str | Path) -> Path | str:
    """Where the model ``spec`` names lives: an existing folder or file as given; a released
    checkpoint's local copy; a Hub repository's cached folder (or its .pth); a preset name is
    returned unchanged (it has no weights). ``hf://org/name/FILE`` is a file inside a Hub
    repository (:func:`hub_file`)."""
    name = str(spec)
    if is_hub_file(name):
        return hub_file(name)
    path = Path(spec)
    if path.exists():
        return path
    if name in RELEASES:
        return released_checkpoint(name)
    if name in PRESETS:
        return name
    if is_hub_id(name):
        return _weights_in(hub_download(name), name)
    meant = closest_name(name, [*RELEASES, *PRESETS])
    if meant is not None:  # another case, a file suffix or a typo of a known name
        if meant in RELEASES:
            try:
                released_checkpoint(meant)
                where = f"load_model({meant!r}) finds it in {ssamba_home()}"
            except CheckpointError:
                where = f"a released checkpoint: put {RELEASES[meant].filename} at " + str(
                    ssamba_home() / RELEASES[meant].filename
                )
        else:
            where = "a preset: random weights"
        raise CheckpointError(f"{name}: no such file or folder; did you mean {meant}? ({where})")
    if "/" not in name and "\\" not in name and not path.suffix:
        raise CheckpointError(
            f"unknown model {name!r}: not a file or folder, a preset ({', '.join(list_models())})"
            f", a released checkpoint ({', '.join(list_models(pretrained=True))}), a Hub id "
            "(org/name) or a Hub file (hf://org/name/FILE)"
        )
    raise CheckpointError(f"{path}: no such file or folder")


def checkpoint_config(path_or_name: str | Path) -> ModelConfig | None:
    """The model config a checkpoint holds, read without its weights where the format allows
    (a ``save_pretrained`` folder); None for a preset name (no weights of its own)."""
    where = resolve_checkpoint(path_or_name)
    if isinstance(where, str):
        return None
    if where.is_dir():
        try:
            return ModelConfig.from_dict(json.loads((where / CONFIG_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return read_pretrained(where)[0]  # its error names what is wrong
    return official_config(read_official(where), str(where))[0]


def load_model(path_or_name: str | Path, **overrides) -> AudioModel:
    """A model from a folder, an official ``.pth``, a released checkpoint, a Hub id or a preset.

    - a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``);
    - an official ``.pth`` file: kind, size, depth and pretraining input size are read from the
      weights;
    - a released official checkpoint by name (``list_models(pretrained=True)``, e.g.
      ``"ssamba_base_400"``), found in :func:`ssamba_home` (the error says where to put it);
    - a Hugging Face Hub id ``org/name[@revision]`` (optional ``huggingface_hub``; downloaded
      into its cache, ``HF_HUB_OFFLINE=1`` uses the cache alone);
    - a file or folder inside a Hub repository, ``hf://org/name[@revision]/FILE.pth`` (e.g. an
      official checkpoint; through the same cache);
    - a preset name (``list_models()``): RANDOM weights, with a :class:`RandomWeightsWarning`.

    ``overrides`` change non-structural settings: ``fstride``, ``tstride``, ``input_tdim``,
    ``num_classes``... (the positional embedding is resized to the new patch grid by the
    official rule).
    """
    where = resolve_checkpoint(path_or_name)
    if isinstance(where, str):
        warnings.warn(
            RandomWeightsWarning(
                f"{where!r} is a preset name: the model has RANDOM weights (pass a checkpoint "
                "folder, an official .pth, a released name or a Hub id for trained ones)"
            ),
            stacklevel=2,
        )
        return AudioModel(preset_config(where, **overrides))
    if where.is_dir():
        return AudioModel.from_pretrained(where, **overrides)
    return load_official(where, **overrides)


def model_stats(normalize, model: AudioModel | None = None) -> tuple[float, float] | None:
    """The fbank (mean, std) a training run normalises with: what ``normalize`` names (see
    :func:`ssamba.audio.normalize_stats`), or for ``"auto"`` the model's own statistics: those
    it was saved with (AudioSet for a preset or an official .pth). ``"auto"`` gives None until
    the model is built, so that building it keeps its statistics."""
    if normalize != "auto":
        return normalize_stats(normalize)
    return None if model is None else (model.config.norm_mean, model.config.norm_std)

"""Pretraining recipes: the official SSAMBA runs, tiny / small / base x 250 / 300 / 400 masked
patches (``ssamba pretrain --recipe ssamba_tiny_400``).

Each recipe sets the :data:`PRETRAIN_FIELDS` of :class:`~ssamba.configs.PretrainConfig` that the
official pretraining scripts fix; what they do not say, or what we could not verify, is left at
ssamba's default and named in the recipe's ``notes`` (nothing is invented). Settings apply as
defaults < recipe < ``--config`` file < options given. Torch-free (``--help`` lists the names).
"""

from __future__ import annotations

from ssamba.configs import PretrainConfig
from ssamba.errors import RecipeError, UsageError, did_you_mean

SIZES = ("tiny", "small", "base")
MASKED_PATCHES = (250, 300, 400)
#: The PretrainConfig fields a pretraining recipe sets.
PRETRAIN_FIELDS = (
    "model",
    "target_length",
    "mask_patch",
    "mask_mode",
    "objective",
    "mpg_weight",
    "lr",
    "warmup_steps",
    "batch_size",
    "epochs",
)
#: What every official run shares (docs/pretraining.md, "Recipe defaults").
_OFFICIAL = {
    "target_length": 1024,  # 10.24 s: a grid of 8 x 64 = 512 patches of 16 x 16
    "mask_mode": "cluster",
    "objective": "joint",  # InfoNCE + 10 * MSE, two passes with their own masks
    "mpg_weight": 10.0,
    "lr": 1e-4,
    "warmup_steps": 1000,
    # src/pretrain/run_mask_patch_amba.sh of the official repository: batch 64, 10 epochs
    "batch_size": 64,
    "epochs": 10,
}
_NOTES = [
    "official: 1024 frames, cluster masks, joint objective (InfoNCE + 10 x MSE), lr 1e-4 with "
    "1000 warm-up steps, AdamW, halving x0.5 after 2 validations without a new best "
    "(ReduceLROnPlateau), validation every 4000 steps at M = 400 (ssamba's defaults do the last "
    "two)",
    "data: AudioSet-2M + LibriSpeech 960 h cut to 10 s (`ssamba prepare audioset-unbalanced`, "
    "`ssamba prepare librispeech`, `ssamba prepare pretrain-mix`)",
    "batch 64 and 10 epochs as the official script (src/pretrain/run_mask_patch_amba.sh, written "
    "for base at M = 300; its other runs are assumed to change only the size and M); drop path "
    "0.1 and LayerNorm without fp32 residuals are ssamba's model defaults too. The script's "
    "batch is the global one (DataParallel); the number of GPUs of the official runs is not "
    "stated",
    "warm-up: the official loop raises the lr as a staircase every 50 steps; ssamba's is linear",
]


def list_pretrain_recipes() -> list[str]:
    """``ssamba_{size}_{M}`` for every size and masked-patch count, in that order."""
    return [f"ssamba_{s}_{m}" for s in SIZES for m in MASKED_PATCHES]


def load_pretrain_recipe(name: str) -> dict:
    """``{"name", "description", "pretrain": {PRETRAIN_FIELDS}, "notes"}`` (a fresh copy)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in list_pretrain_recipes():
        raise RecipeError(
            f"unknown pretraining recipe {name!r}{did_you_mean(name, list_pretrain_recipes())}; "
            f"available: {', '.join(list_pretrain_recipes())}"
        )
    _, size, masked = key.split("_")
    settings = {"model": f"ssamba_{size}", "mask_patch": int(masked), **_OFFICIAL}
    recipe = {
        "name": key,
        "description": f"SSAMBA-{size.capitalize()}, {masked} of 512 patches masked, as the "
        "official pretraining (the released checkpoint of the same name)",
        "pretrain": {k: settings[k] for k in PRETRAIN_FIELDS},
        "notes": list(_NOTES),
    }
    try:  # each value within what pretraining accepts
        PretrainConfig(out="recipe", train="recipe", **recipe["pretrain"])
    except UsageError as err:
        raise RecipeError(f"{key}: {err}") from None
    return recipe


__all__ = ["MASKED_PATCHES", "PRETRAIN_FIELDS", "SIZES", "list_pretrain_recipes",
           "load_pretrain_recipe"]  # fmt: skip

"""Pretraining recipes: the official SSAMBA runs, tiny / small / base x 250 / 300 / 400 masked
patches (``ssamba pretrain --recipe ssamba_tiny_400``), and ours for the teacher objective,
tiny / small / base (``--recipe ssamba_tiny_teacher``).

Each official recipe sets the :data:`OFFICIAL_FIELDS` of :class:`~ssamba.configs.PretrainConfig`
that the official pretraining scripts fix; what they do not say, or what we could not verify, is
left at ssamba's default and named in the recipe's ``notes`` (nothing is invented). The teacher
recipes are ours, not the paper's (it has no such objective): their ``notes`` say where each
value comes from. Settings apply as defaults < recipe < ``--config`` file < options given.
Torch-free (``--help`` lists the names).
"""

from __future__ import annotations

from ssamba.configs import PretrainConfig
from ssamba.errors import RecipeError, UsageError, did_you_mean

SIZES = ("tiny", "small", "base")
MASKED_PATCHES = (250, 300, 400)
#: The PretrainConfig fields an official recipe sets.
OFFICIAL_FIELDS = (
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
#: The teacher objective's own fields, which a teacher recipe sets besides the shared ones.
TEACHER_FIELDS = (
    "mask_ratio",
    "mask_block",
    "masks_per_clip",
    "hide_masked",
    "target_layers",
    "utterance_weight",
    "decoder_layers",
    "ema_decay",
    "ema_end_decay",
    "ema_anneal_steps",
)
#: Every field some recipe sets (what ``--recipe`` may change).
PRETRAIN_FIELDS = OFFICIAL_FIELDS + TEACHER_FIELDS
_TEACHER_RECIPE_FIELDS = (
    tuple(f for f in OFFICIAL_FIELDS if f not in ("mask_patch", "mask_mode", "mpg_weight"))
    + TEACHER_FIELDS
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


#: The teacher recipes (ours): what the three sizes share. 80% hidden in squares of 5 x 5
#: visible patches and 8 views per clip are in the range data2vec 2.0 and EAT report for
#: 10-second clips; the EMA schedule is slow, as theirs, for runs of hundreds of thousands of
#: steps (10 epochs of AudioSet-2M + LibriSpeech at batch 64: ~360k).
_TEACHER = {
    "target_length": 1024,
    "objective": "teacher",
    "mask_ratio": 0.8,
    "mask_block": 5,
    "masks_per_clip": 8,
    "hide_masked": "drop",
    "target_layers": 8,
    "utterance_weight": 1.0,
    "decoder_layers": 4,
    "ema_decay": 0.999,
    "ema_end_decay": 0.99999,
    "ema_anneal_steps": 100_000,
    "warmup_steps": 10_000,
    "batch_size": 64,
    "epochs": 10,
}
#: The teacher recipes' learning rate: lower for wider models, as is usual for AdamW.
_TEACHER_LR = {"tiny": 5e-4, "small": 3e-4, "base": 2e-4}
_TEACHER_NOTES = [
    "ours, not the paper's: SSAMBA was pretrained with the masked patch objective only (the "
    "ssamba_{size}_{M} recipes); no run of these settings on AudioSet has been made here, so "
    "they are a starting point, not a reproduction",
    "objective: an EMA teacher's top 8 layer streams (of 12: SSAMBA's layers come in "
    "bidirectional pairs), each instance-normalised, averaged; 80% of the patches hidden in "
    "each of 8 views per clip (inverse block masking, visible squares of 5 x 5 patches); the "
    "hidden patches dropped from the student's sequence; a 4-layer convolutional decoder; "
    "utterance weight 1 (docs/pretraining.md, 'The teacher objective')",
    "EMA 0.999 rising to 0.99999 over 100k updates, 10k warm-up steps, lr 5e-4 / 3e-4 / 2e-4 "
    "for tiny / small / base: chosen by analogy with data2vec 2.0 and EAT's published settings "
    "for ViT-B, not tuned; batch 64 for 10 epochs as the official recipes",
    "for short runs (minutes to hours) the PretrainConfig defaults suit better: a faster "
    "teacher (0.996 -> 0.9999 over 10k updates), 4 views, squares of 3 x 3 (the study in "
    "docs/pretraining.md)",
]


def list_pretrain_recipes() -> list[str]:
    """``ssamba_{size}_{M}`` for every size and masked-patch count, in that order, then
    ``ssamba_{size}_teacher`` for every size."""
    official = [f"ssamba_{s}_{m}" for s in SIZES for m in MASKED_PATCHES]
    return official + [f"ssamba_{s}_teacher" for s in SIZES]


def _teacher_recipe(size: str) -> dict:
    settings = {"model": f"ssamba_{size}", "lr": _TEACHER_LR[size], **_TEACHER}
    return {
        "description": f"SSAMBA-{size.capitalize()} with the teacher objective: our settings, "
        "not the paper's",
        "pretrain": {k: settings[k] for k in _TEACHER_RECIPE_FIELDS},
        "notes": list(_TEACHER_NOTES),
    }


def _official_recipe(size: str, masked: str) -> dict:
    settings = {"model": f"ssamba_{size}", "mask_patch": int(masked), **_OFFICIAL}
    return {
        "description": f"SSAMBA-{size.capitalize()}, {masked} of 512 patches masked, as the "
        "official pretraining (the released checkpoint of the same name)",
        "pretrain": {k: settings[k] for k in OFFICIAL_FIELDS},
        "notes": list(_NOTES),
    }


def load_pretrain_recipe(name: str) -> dict:
    """``{"name", "description", "pretrain": {fields it sets}, "notes"}`` (a fresh copy)."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in list_pretrain_recipes():
        raise RecipeError(
            f"unknown pretraining recipe {name!r}{did_you_mean(name, list_pretrain_recipes())}; "
            f"available: {', '.join(list_pretrain_recipes())}"
        )
    _, size, kind = key.split("_")
    found = _teacher_recipe(size) if kind == "teacher" else _official_recipe(size, kind)
    recipe = {"name": key, **found}
    try:  # each value within what pretraining accepts
        PretrainConfig(out="recipe", train="recipe", **recipe["pretrain"])
    except UsageError as err:
        raise RecipeError(f"{key}: {err}") from None
    return recipe


__all__ = ["MASKED_PATCHES", "OFFICIAL_FIELDS", "PRETRAIN_FIELDS", "SIZES", "TEACHER_FIELDS",
           "list_pretrain_recipes", "load_pretrain_recipe"]  # fmt: skip

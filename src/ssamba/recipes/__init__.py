"""Fine-tuning recipes for the downstream tasks, and ``ssamba prepare`` (dataset -> manifests).

One JSON file per task in this folder (``list_recipes()``)::

    {"name", "description", "num_classes", "multilabel", "prepare": <dataset layout id>,
     "splits": {...} or "folds": K, "protocol": "<how to report>",
     "finetune": {<FINETUNE_FIELDS>}, "expected": {"ssamba_tiny": number or null, ...,
     "metric", "unit", "source"}, "average": {"first_epoch", "last_epoch"} (optional),
     "notes": [...]}

``finetune`` holds exactly :data:`FINETUNE_FIELDS` (the fine-tuning command reads them), those
of :data:`FINETUNE_OPTIONAL` only when they differ from the default; ``average`` is the official
weight-averaging window (1-based epochs, both included) where the task's official script has one;
``expected`` numbers are the published ones where known, ``null`` means unknown (the ``source``
says which paper/table, or why unknown). :func:`ssamba.recipes.prepare.prepare` (``ssamba prepare
TASK SOURCE_DIR --out DIR``) turns the dataset as its authors distribute it (extracted) into
manifests.

This module imports nothing heavy (the CLI lists the tasks in ``--help`` without loading torch).
"""

from __future__ import annotations

import json
from pathlib import Path

from ssamba.configs import LOSSES, LR_SCHEDULES, FinetuneConfig
from ssamba.errors import RecipeError, UsageError, did_you_mean

RECIPE_DIR = Path(__file__).resolve().parent

#: The ``finetune`` keys of every recipe, with their types.
FINETUNE_FIELDS: dict[str, tuple[type, ...]] = {
    "target_length": (int,),
    "normalize": (str, type(None)),
    "fstride": (int,),
    "tstride": (int,),
    "batch_size": (int,),
    "lr": (float,),
    "epochs": (int,),
    "freqm": (int,),
    "timem": (int,),
    "mixup": (float, int),
    "noise": (bool,),
    "loss": (str,),
    "metric": (str,),
    "head_lr_mult": (float, int),
    "lr_decay": (float, int),
    "lr_decay_start": (int,),
    "warmup_steps": (int,),
    "pool": (str,),
    "balanced": (bool,),
    "weight_decay": (float,),
    "lr_schedule": (str,),
    "lr_milestones": (list,),
}
#: The ``finetune`` keys a recipe may leave out (then FinetuneConfig's default applies).
FINETUNE_OPTIONAL = frozenset({"lr_schedule", "lr_milestones"})
_CHOICES = {
    "normalize": ("audioset", "esc50", "speechcommands", None),
    "loss": LOSSES,
    "metric": ("acc", "map"),
    "pool": ("mean", "cls"),
    "lr_schedule": LR_SCHEDULES,
}
_ALIASES = {
    "esc": "esc50",
    "esc_50": "esc50",
    "audioset": "audioset20k",
    "as20k": "audioset20k",
    "audioset_20k": "audioset20k",
    "speechcommands": "speechcommands_v2",
    "speech_commands": "speechcommands_v2",
    "speech_commands_v2": "speechcommands_v2",
    "speech_commands_v1": "speechcommands_v1",
    "sc2": "speechcommands_v2",
    "sc1": "speechcommands_v1",
    "ks2": "speechcommands_v2",
    "voxceleb": "voxceleb1",
    "sid": "voxceleb1",
    "er": "iemocap",
    "urbansound": "urbansound8k",
    "urban8k": "urbansound8k",
    "us8k": "urbansound8k",
}


def list_recipes() -> list[str]:
    """The task names, sorted (one per JSON file in this folder)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def recipe_name(name: str) -> str:
    """The canonical task name for ``name`` (case, ``-`` vs ``_`` and a few aliases accepted)."""
    key = str(name).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in list_recipes():
        raise RecipeError(
            f"unknown task {name!r}{did_you_mean(name, list_recipes())}; available: "
            f"{', '.join(list_recipes())}"
        )
    return key


def load_recipe(name: str) -> dict:
    """The recipe of a task as a dict (a fresh copy: safe to modify); see the module docstring."""
    key = recipe_name(name)
    path = RECIPE_DIR / f"{key}.json"
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RecipeError(f"{path}: unreadable recipe ({e})") from None
    validate_recipe(recipe, str(path))
    return recipe


def validate_recipe(recipe: dict, where: str = "recipe") -> None:
    """Raise :class:`RecipeError` unless ``recipe`` has the required keys and exactly the
    :data:`FINETUNE_FIELDS`, with the right types and allowed values."""
    for key in ("name", "description", "num_classes", "prepare", "finetune", "expected"):
        if key not in recipe:
            raise RecipeError(f"{where}: missing key {key!r}")
    ft = recipe["finetune"]
    missing = sorted(set(FINETUNE_FIELDS) - set(ft) - FINETUNE_OPTIONAL)
    extra = sorted(set(ft) - set(FINETUNE_FIELDS))
    if missing or extra:
        raise RecipeError(f"{where}: finetune fields missing {missing}, unexpected {extra}")
    for key, types in FINETUNE_FIELDS.items():
        if key not in ft:
            continue
        value = ft[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise RecipeError(f"{where}: finetune.{key} = {value!r} has the wrong type")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise RecipeError(f"{where}: finetune.{key} = {value!r}; allowed: {_CHOICES[key]}")
    try:  # each value within what fine-tuning accepts (the same checks as its options)
        FinetuneConfig(out="recipe", **ft)
    except UsageError as err:
        raise RecipeError(f"{where}: finetune.{err}") from None
    n = recipe["num_classes"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise RecipeError(f"{where}: num_classes must be an integer >= 2, got {n!r}")
    if ft["metric"] == "map" and not recipe.get("multilabel", False):
        raise RecipeError(f"{where}: metric 'map' is meant for multi-label tasks")
    if "source" not in recipe["expected"]:
        raise RecipeError(f"{where}: expected.source is missing")
    if "average" in recipe:
        _check_average(recipe["average"], ft["epochs"], where)


def _check_average(window, epochs: int, where: str) -> None:
    """``{"first_epoch", "last_epoch"}``: 1-based, both included, within the run's epochs."""
    ok = isinstance(window, dict) and set(window) == {"first_epoch", "last_epoch"}
    first, last = (window.get("first_epoch"), window.get("last_epoch")) if ok else (None, None)
    if not (ok and all(isinstance(v, int) and not isinstance(v, bool) for v in (first, last))):
        raise RecipeError(f"{where}: average must be {{first_epoch, last_epoch}}, got {window!r}")
    if not 1 <= first <= last <= epochs:
        raise RecipeError(f"{where}: average epochs {first}-{last} not within 1-{epochs}")


__all__ = [
    "FINETUNE_FIELDS",
    "FINETUNE_OPTIONAL",
    "RecipeError",
    "list_recipes",
    "load_recipe",
    "recipe_name",
    "validate_recipe",
]

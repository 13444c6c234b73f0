"""K-fold cross-validation of fine-tuning, reported as the recipes say (``ssamba crossval``).

A prepared dataset (``ssamba prepare esc50|urbansound8k|iemocap``) holds ``fold{k}_train`` and
``fold{k}_eval`` manifests (CSV, or SSAST JSON). A manifest whose split column names the folds
(``fold1`` .. ``foldK``, as the ``all.csv`` of a prepared folder) serves as well: fold ``k``
trains on the rows of the other folds and evaluates on those of ``fold{k}`` (written to
``OUT/folds/``); ``PATH:fold{k}`` runs that fold only, as ``folds=[k]``.

For each fold ``k`` :func:`crossval` fine-tunes (:func:`ssamba.finetune.finetune`) on
``fold{k}_train`` into ``OUT/fold{k}``, evaluating on ``fold{k}_eval`` after every epoch
(``--eval-every``), and reports, per the recipes' protocol, the evaluation-fold metric **after
the last epoch**, then its mean over the folds. The best epoch's metric is reported too, marked
as optimistic: it is chosen on the evaluation fold itself.

Settings: defaults < recipe (``--recipe``, else the task named in ``prepare.json``) < explicit
options, exactly as ``ssamba finetune``. Resumable: a fold whose ``summary.json`` shows it ran to
the end is skipped; a fold that was interrupted continues from its last checkpoint (``fit``'s exact
resume); the settings are stored in ``OUT/crossval_config.json`` and a rerun with other settings is
refused (use another ``--out`` or ``--overwrite``). ``folds=[1, 3]`` runs a subset;
``OUT/crossval.json`` covers every finished fold in ``OUT``.

``crossval.json``::

    {"recipe", "protocol", "metric", "prepared", "folds": {"1": {"last", "best", "best_step",
     "steps", "epochs", "dir", "last_metrics"}, ...}, "mean", "std" (population std over folds),
     "best_mean", "num_folds", "available_folds", "protocol_folds", "complete", "expected"}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path

from ssamba.configs import FinetuneConfig
from ssamba.data import Manifest, check_input, input_form, read_manifest
from ssamba.data.inputs import DATASET_FOLDER, MANIFEST, SPLIT
from ssamba.errors import ManifestError, RecipeError, TrainingError, UsageError
from ssamba.fileio import atomic_write_csv, atomic_write_json
from ssamba.finetune import finetune
from ssamba.recipes import load_recipe, recipe_name
from ssamba.training import METRICS, RESUMABLE_CHANGES, RUN_FILE, SUMMARY_FILE, read_metrics

log = logging.getLogger(__name__)

RESULT_FILE = "crossval.json"
CONFIG_FILE = "crossval_config.json"
_FOLD_FILE = re.compile(r"^fold(\d+)_(train|eval)\.(csv|json)$")
_FOLD_SPLIT = re.compile(r"^fold(\d+)$")
FOLDS_FOLDER = "folds"  # OUT/folds: the fold manifests drawn from a manifest's split column
#: What ``--prepared`` takes: a prepared folder, a manifest whose splits are folds, one fold.
FOLD_INPUTS = frozenset({DATASET_FOLDER, MANIFEST, SPLIT})
_PER_FOLD = {"train", "valid", "test", "out"}  # set for each fold


def find_folds(prepared: str | os.PathLike) -> dict[int, tuple[Path, Path]]:
    """``{k: (fold{k}_train, fold{k}_eval)}`` of a prepared folder (CSV preferred over JSON)."""
    prepared = Path(prepared)
    if not prepared.is_dir():
        raise FileNotFoundError(f"{prepared}: not a folder (run `ssamba prepare` first)")
    found: dict[int, dict[str, Path]] = {}
    for p in sorted(prepared.iterdir(), key=lambda p: p.suffix != ".csv"):  # CSV first
        m = _FOLD_FILE.match(p.name)
        if m:
            found.setdefault(int(m.group(1)), {}).setdefault(m.group(2), p)
    folds = {k: (v["train"], v["eval"]) for k, v in sorted(found.items()) if len(v) == 2}
    if not folds:
        raise FileNotFoundError(
            f"{prepared}: no fold{{k}}_train / fold{{k}}_eval manifests (as written by "
            "`ssamba prepare esc50|urbansound8k|iemocap`)"
        )
    return folds


def fold_splits(manifest: Manifest) -> dict[int, str]:
    """``{k: "fold{k}"}`` of a manifest whose split column names folds; a ManifestError
    naming its splits otherwise."""
    folds = {int(m[1]): name for name in manifest.splits() if (m := _FOLD_SPLIT.match(name))}
    if not folds or len(folds) != len(manifest.splits()):
        found = ", ".join(manifest.splits()) or "no split column"
        raise ManifestError(
            f"{manifest.source}: its splits are not folds ({found}); cross-validation takes a "
            "split column naming them fold1 .. foldK (as the all.csv of `ssamba prepare`)"
        )
    return dict(sorted(folds.items()))


def write_fold_manifests(manifest: Manifest, folder: Path) -> dict[int, tuple[Path, Path]]:
    """``{k: (fold{k}_train.csv, fold{k}_eval.csv)}`` written into ``folder``: fold ``k``'s
    rows to evaluate, the other folds' rows to train on (absolute paths)."""
    available = {}
    for k, name in fold_splits(manifest).items():
        parts = {
            "train": [ex for ex in manifest if ex.split != name],
            "eval": [ex for ex in manifest if ex.split == name],
        }
        for part, examples in parts.items():
            rows = ([ex.path.resolve(), ";".join(ex.labels)] for ex in examples)
            atomic_write_csv(folder / f"fold{k}_{part}.csv", ["path", "label"], rows, "\n")
        available[k] = (folder / f"fold{k}_train.csv", folder / f"fold{k}_eval.csv")
    return available


def recipe_from_prepared(prepared: str | os.PathLike) -> str | None:
    """The task ``ssamba prepare`` recorded in ``prepare.json`` (None if absent/unknown) of
    ``prepared``, or of the folder of a manifest (``PREPARED/all.csv``) given instead."""
    folder = input_form(prepared).path
    report = (folder if folder.is_dir() else folder.parent) / "prepare.json"
    if not report.is_file():
        return None
    try:
        task = json.loads(report.read_text()).get("task")
    except (OSError, json.JSONDecodeError):
        return None
    try:
        return recipe_name(task) if task else None
    except RecipeError:
        return None


def _settings(cfg: FinetuneConfig) -> dict:
    """The template's settings (each a ``crossval`` option: the file replays the run)."""
    return {k: v for k, v in cfg.settings().items() if k not in _PER_FOLD}


def _finished(fold_dir: Path, cfg: FinetuneConfig) -> bool:
    """True when ``fold_dir/summary.json`` shows the run went to its planned end."""
    path = fold_dir / SUMMARY_FILE
    if not path.is_file():
        return False
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if cfg.max_steps:
        return summary.get("steps", 0) >= cfg.max_steps
    return summary.get("epochs", 0) >= cfg.epochs


def fold_result(fold_dir: str | os.PathLike, metric: str) -> dict:
    """The evaluation-fold ``metric`` after the last epoch (the last validation record) and at
    the best epoch, read from ``fold_dir/metrics.jsonl`` and ``summary.json``."""
    fold_dir = Path(fold_dir)
    valid = [r for r in read_metrics(fold_dir / METRICS) if r.get("kind") == "valid"]
    if not valid or metric not in valid[-1]:
        raise TrainingError(f"{fold_dir}: no validation {metric!r} recorded")
    last = max(valid, key=lambda r: r["step"])
    best = max(valid, key=lambda r: (r.get(metric, -math.inf), -r["step"]))
    summary = json.loads((fold_dir / SUMMARY_FILE).read_text())
    return {
        "last": last[metric],
        "best": best[metric],
        "best_step": best["step"],
        "steps": summary.get("steps"),
        "epochs": summary.get("epochs"),
        "dir": str(fold_dir),
        "last_metrics": {
            k: v for k, v in last.items() if k not in ("kind", "step", "epoch") and v is not None
        },
    }


def crossval(
    template: FinetuneConfig,
    prepared: str | os.PathLike,
    out: str | os.PathLike,
    folds: list[int] | None = None,
    *,
    recipe: str | None = None,
    device: str | None = None,
) -> dict:
    """Run the folds of ``prepared`` (a prepared folder, or a manifest whose split column names
    the folds; ``PATH:fold{k}``: fold ``k`` only) with the settings of ``template`` (its
    train/valid/test/out are replaced per fold) and return the results (also written to
    ``OUT/crossval.json``). ``recipe`` names the task whose protocol text and expected fold
    count are reported."""
    form = check_input(prepared, FOLD_INPUTS, "`ssamba crossval --prepared`")
    out = Path(out)
    whole = None
    if form.kind in (MANIFEST, SPLIT):
        whole = read_manifest(form.path)
        if form.split is not None:
            folds = _the_fold(whole, form.split, folds)
        prepared = Path(form.path)
        available = {k: (Path(), Path()) for k in fold_splits(whole)}
    else:
        prepared = form.path
        available = find_folds(prepared)
    chosen = sorted(available) if folds is None else folds
    missing = [k for k in chosen if k not in available]
    if missing:
        raise FileNotFoundError(
            f"{prepared}: no fold{missing[0]}_train/_eval (folds: {sorted(available)})"
        )
    info = load_recipe(recipe) if recipe else {}
    if info.get("folds") and len(available) != info["folds"]:
        log.warning("%s has %d folds; the %s protocol has %d", prepared, len(available),
                    info["name"], info["folds"])  # fmt: skip
    main = int(os.environ.get("RANK", "0")) == 0
    _record_settings(template, prepared, out, info.get("name"), main)
    if whole is not None:  # every rank writes the same files, atomically
        available = write_fold_manifests(whole, out / FOLDS_FOLDER)
    for k in chosen:
        _run_fold(template, k, available[k], out / f"fold{k}", main, device)
    summary = _summarise(template, prepared, out, available, info)
    if main:
        atomic_write_json(out / RESULT_FILE, summary)
    return summary


def _the_fold(manifest: Manifest, split: str, folds: list[int] | None) -> list[int]:
    """``[k]`` for ``PATH:fold{k}``; refused with ``folds`` naming others."""
    k = next((k for k, name in fold_splits(manifest).items() if name == split), None)
    if k is None:
        raise ManifestError(f"{manifest.source}: no split {split!r} (splits: "
                            f"{', '.join(manifest.splits())})")  # fmt: skip
    if folds is not None and folds != [k]:
        raise UsageError(f"{manifest.source}:{split} names fold {k}; --folds asks for {folds}")
    return [k]


def _record_settings(template, prepared: Path, out: Path, recipe: str | None, main: bool) -> None:
    """Refuse to mix folds of other settings into ``out`` (unless overwriting); record ours."""
    settings = {"recipe": recipe, "prepared": str(prepared.resolve()), **_settings(template)}
    settings = json.loads(json.dumps(settings, default=str))
    config_file = out / CONFIG_FILE
    if config_file.is_file() and not template.overwrite:
        saved = json.loads(config_file.read_text())
        changed = sorted(
            k
            for k in set(saved) | set(settings)
            if k not in RESUMABLE_CHANGES and saved.get(k) != settings.get(k)
        )
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise TrainingError(
                f"{out} holds a cross-validation with other settings ({details}): use another "
                "--out, or --overwrite to redo the folds"
            )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_file, settings)


def _run_fold(template, k: int, manifests, fold_dir: Path, main: bool, device) -> None:
    """Fine-tune fold ``k`` into ``fold_dir``: skipped when finished, resumed when interrupted."""
    if not template.overwrite and _finished(fold_dir, template):
        log.info("fold %d: already done (%s), skipped", k, fold_dir)
        return
    if template.overwrite and main:  # a stale summary would mark a crashed redo finished
        (fold_dir / SUMMARY_FILE).unlink(missing_ok=True)
    resume = not template.overwrite and (fold_dir / RUN_FILE).is_file()
    train, held_out = manifests
    cfg = dataclasses.replace(
        template, train=str(train), valid=str(held_out), test=None, out=str(fold_dir),
        resume=resume or template.resume,
    )  # fmt: skip
    log.info("fold %d: train %s, evaluate %s%s", k, train.name, held_out.name,
             " (resuming)" if resume else "")  # fmt: skip
    finetune(cfg, device=device)


def _summarise(template, prepared: Path, out: Path, available: dict, info: dict) -> dict:
    """The result over every finished fold in ``out`` (see the module docstring)."""
    metric = template.metric
    results = {}
    for k in sorted(available):
        fold_dir = out / f"fold{k}"
        if _finished(fold_dir, template):
            results[str(k)] = fold_result(fold_dir, metric)
    lasts = [r["last"] for r in results.values()]
    mean = sum(lasts) / len(lasts) if lasts else None
    std = math.sqrt(sum((x - mean) ** 2 for x in lasts) / len(lasts)) if lasts else None
    return {
        "recipe": info.get("name"),
        "protocol": info.get("protocol")
        or "mean over folds of the evaluation-fold metric after the last epoch",
        "metric": metric,
        "prepared": str(prepared),
        "folds": results,
        "mean": mean,
        "std": std,
        "best_mean": sum(r["best"] for r in results.values()) / len(results) if results else None,
        "num_folds": len(results),
        "available_folds": len(available),
        "protocol_folds": info.get("folds") or len(available),
        "complete": len(results) == len(available),
        "expected": info.get("expected"),
    }


__all__ = [
    "crossval",
    "find_folds",
    "fold_splits",
    "fold_result",
    "recipe_from_prepared",
]

"""K-fold cross-validation of fine-tuning (``ssamba crossval``), reported as the recipes say.

A prepared dataset (``ssamba prepare esc50|urbansound8k|iemocap``) holds ``fold{k}_train`` and
``fold{k}_eval`` manifests (CSV, or SSAST JSON). For each fold ``k`` :func:`crossval` fine-tunes
(:func:`ssamba.finetune.finetune`) on ``fold{k}_train`` into ``OUT/fold{k}``, evaluating on
``fold{k}_eval`` after every epoch (``--eval-every``), and reports, per the recipes' protocol,
the evaluation-fold metric **after the last epoch**, then its mean over the folds. The best epoch's
metric is reported too, marked as optimistic: it is chosen on the evaluation fold itself.

Settings: defaults < recipe (``--recipe``, else the task named in ``prepare.json``) < explicit
options, exactly as ``ssamba finetune``. Resumable: a fold whose ``summary.json`` shows it ran to
the end is skipped; a fold that was interrupted continues from its last checkpoint (``fit``'s exact
resume); the settings are stored in ``OUT/crossval_config.json`` and a rerun with other settings is
refused (use another ``--out`` or ``--overwrite``). ``--folds 1,3`` runs a subset; the table and
``OUT/crossval.json`` cover every finished fold in ``OUT``.

``crossval.json``::

    {"recipe", "protocol", "metric", "prepared", "folds": {"1": {"last", "best", "best_step",
     "steps", "epochs", "dir", "last_metrics"}, ...}, "mean", "std" (population std over folds),
     "best_mean", "num_folds", "available_folds", "protocol_folds", "complete", "expected"}
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
from pathlib import Path

from ssamba.training import RESUMABLE_CHANGES, TrainingError, atomic_write_text

log = logging.getLogger(__name__)

RESULT_FILE = "crossval.json"
CONFIG_FILE = "crossval_config.json"
_FOLD_FILE = re.compile(r"^fold(\d+)_(train|eval)\.(csv|json)$")
# per-fold or run-control settings, left out of the consistency check
_PER_FOLD = {"train", "valid", "test", "out", "resume", "overwrite"} | RESUMABLE_CHANGES


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


def parse_folds(text: str | None) -> list[int] | None:
    """``"1,3"`` or ``"1-3,5"`` -> [1, 3] / [1, 2, 3, 5]; None -> None (all folds)."""
    if text is None or not str(text).strip():
        return None
    folds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                folds.extend(range(a, b + 1))
            else:
                folds.append(int(part))
        except ValueError:
            raise ValueError(f"--folds: {text!r} is not a list like 1,2 or 1-3") from None
    return sorted(set(folds))


def recipe_from_prepared(prepared: str | os.PathLike) -> str | None:
    """The task ``ssamba prepare`` recorded in ``prepare.json`` (None if absent/unknown)."""
    report = Path(prepared) / "prepare.json"
    if not report.is_file():
        return None
    try:
        task = json.loads(report.read_text()).get("task")
    except (OSError, json.JSONDecodeError):
        return None
    from ssamba.recipes import RecipeError, recipe_name

    try:
        return recipe_name(task) if task else None
    except RecipeError:
        return None


def _settings(cfg) -> dict:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return {k: v for k, v in d.items() if k not in _PER_FOLD}


def _finished(fold_dir: Path, cfg) -> bool:
    """True when ``fold_dir/summary.json`` shows the run went to its planned end."""
    path = fold_dir / "summary.json"
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
    from ssamba.training import read_metrics

    fold_dir = Path(fold_dir)
    valid = [r for r in read_metrics(fold_dir / "metrics.jsonl") if r.get("kind") == "valid"]
    if not valid or metric not in valid[-1]:
        raise TrainingError(f"{fold_dir}: no validation {metric!r} recorded")
    last = max(valid, key=lambda r: r["step"])
    best = max(valid, key=lambda r: (r.get(metric, -math.inf), -r["step"]))
    summary = json.loads((fold_dir / "summary.json").read_text())
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
    template,
    prepared: str | os.PathLike,
    out: str | os.PathLike,
    folds: list[int] | None = None,
    *,
    recipe: str | None = None,
    device: str | None = None,
) -> dict:
    """Run the folds of ``prepared`` with the settings of ``template`` (a
    :class:`~ssamba.finetune.FinetuneConfig`; its train/valid/test/out are replaced per fold) and
    return the results (also written to ``OUT/crossval.json``). ``recipe`` names the task whose
    protocol text and expected fold count are reported."""
    from ssamba.finetune import finetune

    prepared, out = Path(prepared), Path(out)
    available = find_folds(prepared)
    chosen = sorted(available) if folds is None else folds
    missing = [k for k in chosen if k not in available]
    if missing:
        raise FileNotFoundError(
            f"{prepared}: no fold{missing[0]}_train/_eval (folds: {sorted(available)})"
        )
    info = {}
    if recipe:
        from ssamba.recipes import load_recipe

        info = load_recipe(recipe)
        n = info.get("folds")
        if n and len(available) != n:
            log.warning("%s has %d folds; the %s protocol has %d", prepared, len(available),
                        info["name"], n)  # fmt: skip
    main = int(os.environ.get("RANK", "0")) == 0
    settings = {"recipe": info.get("name"), "prepared": str(prepared.resolve()),
                **_settings(template)}  # fmt: skip
    settings = json.loads(json.dumps(settings, default=str))
    config_file = out / CONFIG_FILE
    if config_file.is_file() and not template.overwrite:
        saved = json.loads(config_file.read_text())
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise TrainingError(
                f"{out} holds a cross-validation with other settings ({details}): use another "
                "--out, or --overwrite to redo the folds"
            )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config_file, json.dumps(settings, indent=2))

    for k in chosen:
        fold_dir = out / f"fold{k}"
        if not template.overwrite and _finished(fold_dir, template):
            log.info("fold %d: already done (%s), skipped", k, fold_dir)
            continue
        if template.overwrite and main:  # a stale summary would mark a crashed redo finished
            (fold_dir / "summary.json").unlink(missing_ok=True)
        resume = not template.overwrite and (fold_dir / "run.json").is_file()
        train, held_out = available[k]
        cfg = dataclasses.replace(
            template, train=str(train), valid=str(held_out), test=None, out=str(fold_dir),
            resume=resume or template.resume,
        )  # fmt: skip
        log.info("fold %d: train %s, evaluate %s%s", k, train.name, held_out.name,
                 " (resuming)" if resume else "")  # fmt: skip
        finetune(cfg, device=device)

    results = {}
    for k in sorted(available):
        fold_dir = out / f"fold{k}"
        if _finished(fold_dir, template):
            results[str(k)] = fold_result(fold_dir, template.metric)
    lasts = [r["last"] for r in results.values()]
    mean = sum(lasts) / len(lasts) if lasts else None
    std = math.sqrt(sum((x - mean) ** 2 for x in lasts) / len(lasts)) if lasts else None
    protocol_folds = info.get("folds") or len(available)
    summary = {
        "recipe": info.get("name"),
        "protocol": info.get("protocol")
        or "mean over folds of the evaluation-fold metric after the last epoch",
        "metric": template.metric,
        "prepared": str(prepared),
        "folds": results,
        "mean": mean,
        "std": std,
        "best_mean": sum(r["best"] for r in results.values()) / len(results) if results else None,
        "num_folds": len(results),
        "available_folds": len(available),
        "protocol_folds": protocol_folds,
        "complete": len(results) == len(available),
        "expected": info.get("expected"),
    }
    if main:
        atomic_write_text(out / RESULT_FILE, json.dumps(summary, indent=2))
    return summary


def format_table(summary: dict) -> str:
    """The per-fold table (percent) with the mean, as ``ssamba crossval`` prints it."""
    metric = summary["metric"]
    name = summary.get("recipe") or "cross-validation"
    lines = [
        f"{name}: {metric} on each evaluation fold after the last epoch (percent)",
        f"{'fold':>6}  {'last':>7}  {'best*':>7}  {'epochs':>6}",
    ]
    for k, r in summary["folds"].items():
        lines.append(
            f"{'fold' + k:>6}  {100 * r['last']:7.2f}  {100 * r['best']:7.2f}  {r['epochs']:>6}"
        )
    if summary["mean"] is not None:
        lines.append(
            f"{'mean':>6}  {100 * summary['mean']:7.2f}  {100 * summary['best_mean']:7.2f}"
            f"  (std {100 * summary['std']:.2f})"
        )
    lines.append("* best epoch, chosen on the evaluation fold itself: optimistic, not the protocol")
    if not summary["complete"]:
        lines.append(
            f"partial: {summary['num_folds']} of {summary['available_folds']} folds finished "
            "(run the others with --folds)"
        )
    if summary["protocol_folds"] != summary["available_folds"]:
        lines.append(
            f"note: the {name} protocol has {summary['protocol_folds']} folds; this dataset has "
            f"{summary['available_folds']}"
        )
    expected = summary.get("expected") or {}
    known = {k: v for k, v in expected.items() if k.startswith("ss") and v is not None}
    if known:
        shown = ", ".join(f"{k} {v}" for k, v in known.items())
        lines.append(f"published: {shown} ({expected.get('unit', '')})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- command line
def add_crossval_parser(subparsers) -> None:
    from ssamba.finetune import add_finetune_options

    p = subparsers.add_parser(
        "crossval",
        help="k-fold cross-validation of fine-tuning on a prepared dataset",
        description=(
            "Fine-tune on each fold of a dataset prepared by `ssamba prepare` (fold{k}_train, "
            "evaluated on fold{k}_eval) into OUT/fold{k}, then report each fold's accuracy after "
            "the last epoch and their mean (the recipes' protocol) in OUT/crossval.json. "
            "Finished folds are skipped on a rerun. Options as `ssamba finetune`."
        ),
    )
    p.add_argument("--prepared", required=True, help="folder written by `ssamba prepare`")
    p.add_argument("--folds", help="subset of folds, e.g. 1,2 or 1-3 (default: all)")
    p.add_argument("--recipe", help="task recipe (default: the task in PREPARED/prepare.json)")
    add_finetune_options(p)
    p.set_defaults(func=run_crossval)


def config_from_args(args):
    """The fold template: ``finetune.config_from_args`` (defaults < recipe < explicit options)
    with the recipe from ``--recipe`` or ``prepare.json``."""
    from ssamba.finetune import config_from_args as finetune_config

    recipe = args.recipe or recipe_from_prepared(args.prepared)
    ns = argparse.Namespace(**vars(args))
    ns.recipe, ns.train, ns.valid, ns.test = recipe, "", None, None
    return finetune_config(ns), recipe


def run_crossval(args) -> int:
    from ssamba.training import configure_logging

    configure_logging(int(os.environ.get("RANK", "0")) == 0)
    template, recipe = config_from_args(args)
    summary = crossval(
        template,
        args.prepared,
        args.out,
        parse_folds(args.folds),
        recipe=recipe,
        device=args.device,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_table(summary))
    return 0


__all__ = [
    "add_crossval_parser",
    "config_from_args",
    "crossval",
    "find_folds",
    "fold_result",
    "format_table",
    "parse_folds",
    "recipe_from_prepared",
    "run_crossval",
]

"""``ssamba demo``: the whole pipeline on built-in real audio, SSAMBA versus SSAST.

1. Build the data (cached): an unlabelled pretraining mix and two labelled tasks whose test sets
   differ in kind from training (unseen TTS voices for keywords, unseen instruments).
2. Pretrain SSAMBA and SSAST of the same small size on the same data for the same time.
3. Fine-tune both, and SSAMBA from random initialisation, with LP-FT: each run starts from the
   linear probe of its final output, which is reported beside it; next to a log-mel +
   logistic-regression baseline (``fold_probes``: also the separate probes of every layer).
4. Write results.md / results.json, plots and a README to the output folder
   (:mod:`.report`; the plan's sizes and tasks: :mod:`.plan`).

``budget`` scales every time and data size (1.0: about 12 minutes on 2 CPU cores).
:func:`run_demo` runs it all and returns the report; ``ssamba demo`` (:mod:`ssamba.cli.demo`)
prints its table.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ssamba.audio import fbank, load_audio
from ssamba.checkpoints import RandomWeightsWarning, load_model
from ssamba.data import compute_stats, read_manifest
from ssamba.demo import builders
from ssamba.demo.plan import FOLD_GROUPS, MIN_FOLDS, PROBE_VIEWS, TASKS, DemoPlan

# the report's text and margins stay importable from here, where they were before their module
from ssamba.demo.report import make_report, margins, margins_text, report_text, write_report  # noqa: F401
from ssamba.embeddings import layer_columns, num_layers
from ssamba.errors import UsageError
from ssamba.fileio import atomic_write_json
from ssamba.finetune import FinetuneConfig, finetune
from ssamba.models import create_model
from ssamba.pretrain import PretrainConfig, pretrain
from ssamba.probe import embed_labelled, fit_probe, linear_probes, view_layers

log = logging.getLogger(__name__)


def _preset(arch: str, plan: DemoPlan) -> tuple[str, dict]:
    depth = plan.ssamba_depth if arch == "ssamba" else plan.ssast_depth
    return f"{arch}_tiny", {"depth": depth}


# ---------------------------------------------------------------------------- steps
def build_data(out: Path, plan: DemoPlan, progress: bool) -> dict:
    data = out / "data"
    built = {
        "pretrain": builders.build_pretrain_mix(
            data / "pretrain",
            minutes=plan.pretrain_minutes_audio,
            seed=plan.seed,
            seconds=plan.clip_frames / 100,
            progress=progress,
        ),
        "keywords": builders.build_keywords(
            data / "keywords", per_class=plan.keywords_per_class, seed=plan.seed, progress=progress
        ),
        "instruments": builders.build_instruments(
            data / "instruments",
            per_class=plan.instruments_per_class,
            seed=plan.seed,
            progress=progress,
        ),
    }
    for result in built.values():
        log.info("\n%s", builders.format_summary(result))
    return built


def _timed_run(run: Path, stats, plan: DemoPlan, minutes: float) -> dict:
    """What every demo run shares: its folder, the data's statistics, a time budget in place of
    epochs, no checkpoints but the final and best, no loader processes, the plan's seed."""
    return dict(
        out=str(run),
        normalize=f"{stats[0]},{stats[1]}",
        epochs=10_000,  # bounded by the time budget
        max_minutes=minutes,
        save_every=100_000,
        workers=0,  # tiny clips: loader processes would only take the cores from the model
        seed=plan.seed,
        progress=False,
        overwrite=True,
    )


def pretrain_config(arch: str, manifest, stats, run: Path, plan: DemoPlan, **changes):
    """The demo's pretraining settings for ``arch`` on ``manifest`` into ``run``: the plan's
    model, clip length, batch, lr and time budget. ``changes`` replace fields (the studies in
    benchmarks/ run the same settings to a step count instead of a time)."""
    name, overrides = _preset(arch, plan)
    cfg = PretrainConfig(
        **_timed_run(run, stats, plan, plan.pretrain_minutes),
        model=name,
        train=str(manifest),
        target_length=plan.clip_frames,
        batch_size=plan.batch_size,
        lr=plan.lr,
        warmup_steps=20,
        model_overrides=overrides,
    )
    return replace(cfg, **changes)


def pretrain_model(arch: str, data: dict, stats, out: Path, plan: DemoPlan, progress: bool):
    run = out / "runs" / f"pretrain_{arch}"
    cfg = pretrain_config(
        arch,
        data["pretrain"]["manifest"],
        stats,
        run,
        plan,
        batch_size=min(plan.batch_size, data["pretrain"]["clips"]),  # tiny budgets
        progress=progress,
    )
    # A model is reused only if it was pretrained with these settings on this very data.
    spec = Path(data["pretrain"]["manifest"]).parent / "build.json"
    key = {
        "config": {k: v for k, v in cfg.__dict__.items() if k != "progress"},
        "data": json.loads(spec.read_text()) if spec.is_file() else None,
    }
    key_file = run / "demo_key.json"
    reusable = (run / "final" / "model.safetensors").exists() and key_file.is_file()
    if reusable and json.loads(key_file.read_text()) == json.loads(json.dumps(key, default=str)):
        log.info("%s: reusing the pretrained model in %s", arch, run)
    else:
        compile_kernels(arch, plan)
        pretrain(cfg)
        atomic_write_json(key_file, key, default=str)
    return run


def compile_kernels(arch: str, plan: DemoPlan) -> float:
    """Run a copy of ``arch``'s demo model forward and backward once, so that the one-time
    compilation of its CPU kernels (numba: ~30 s on the first run of a fresh install, cached on
    disk after it) is not taken from the pretraining minutes the demo gives every model; returns
    the seconds it took."""
    started = time.time()
    name, overrides = _preset(arch, plan)
    model = create_model(name, input_tdim=plan.clip_frames, pretrain_heads=False, **overrides)
    fbank = torch.zeros(2, plan.clip_frames, model.config.num_mel_bins)
    model.train()(fbank).float().sum().backward()
    seconds = time.time() - started
    log.info("%s: kernels ready in %.1f s (before the pretraining clock starts)", arch, seconds)
    return seconds


def random_model(arch: str, stats, plan: DemoPlan):
    name, overrides = _preset(arch, plan)
    torch.manual_seed(plan.seed)
    return create_model(
        name, input_tdim=plan.clip_frames, norm_mean=stats[0], norm_std=stats[1], **overrides
    )


def probe(model, task: dict, out: Path, plan: DemoPlan, progress: bool, name: str = "") -> dict:
    """Linear-probe test accuracy of ``model`` on ``task``: ``{"probe": the plan's view,
    "views": {view: accuracy}, "clips": clips scored}``, over group folds for the tasks of
    :data:`FOLD_GROUPS` (when every class has :data:`MIN_FOLDS` groups), else on the test split."""
    if plan.probe_layers not in PROBE_VIEWS:
        raise UsageError(f"probe_layers must be 'all' or 'last', got {plan.probe_layers!r}")
    views = {"all": tuple(range(num_layers(model))), "last": (-1,)}
    options = dict(batch_size=32, cache_dir=out / "probe_cache", progress=progress)
    folds = group_folds(task, FOLD_GROUPS[name]) if name in FOLD_GROUPS else None
    if folds is None:
        results = linear_probes(
            model,
            task["train"],
            task["valid"],
            task["test"],
            views,
            pooling=plan.pooling,
            **options,
        )
        scores = {v: float(r["test"]["accuracy"]) for v, r in results.items()}
        clips = results["all"]["test"]["files"]
    else:
        scores, clips = _probe_folds(model, task, folds, views, plan.pooling, options)
    return {"probe": scores[plan.probe_layers], "views": scores, "clips": clips}


def group_folds(task: dict, column: str) -> tuple[np.ndarray, int] | None:
    """Fold of every clip of ``task["manifest"]``: the rank of its ``column`` value (from
    ``task["meta"]``) among its class's values, modulo the fewest values a class has; ``None``
    when a class has fewer than :data:`MIN_FOLDS`."""
    with open(task["meta"], newline="") as f:
        meta = list(csv.DictReader(f))
    paths = [Path(ex.path).resolve() for ex in read_manifest(task["manifest"]).examples]
    root = Path(task["meta"]).parent
    if [(root / r["path"]).resolve() for r in meta] != paths:
        raise UsageError(f"{task['meta']}: its rows are not those of {task['manifest']}")
    groups: dict[str, list[str]] = {}
    for r in meta:
        groups.setdefault(r["label"], [])
        if r[column] not in groups[r["label"]]:
            groups[r["label"]].append(r[column])
    k = min(len(v) for v in groups.values())
    if k < MIN_FOLDS:
        return None
    order = {label: sorted(v, key=_natural) for label, v in groups.items()}
    return np.array([order[r["label"]].index(r[column]) % k for r in meta]), k


def _natural(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def _probe_folds(model, task, folds, views, pooling, options) -> tuple[dict, int]:
    manifest = read_manifest(task["manifest"])
    layers, chosen = view_layers(model, views)
    # every file is embedded (a bad one stops the demo: on_bad_file "error"), so rows are folds
    x, y, _ = embed_labelled(model, manifest, layers=layers, pooling=pooling, **options)
    scores = {}
    for view, keep in chosen.items():
        cols = layer_columns(layers, keep, x.shape[1], pooling)
        scores[view] = fold_accuracy(x[:, cols], y, folds, manifest.classes)
    return scores, len(folds[0])


def fold_accuracy(x: np.ndarray, y: np.ndarray, folds: tuple[np.ndarray, int], classes) -> float:
    """Accuracy of linear probes over ``folds`` (fold f: test, f + 1: valid, the rest: train),
    every row scored once."""
    fold, k = folds
    correct = 0.0
    for f in range(k):
        test, valid = fold == f, fold == (f + 1) % k
        splits = {"train": ~(test | valid), "valid": valid, "test": test}
        result = fit_probe({n: (x[m], y[m]) for n, m in splits.items()}, False, classes)
        correct += result["test"]["accuracy"] * int(test.sum())
    return correct / len(fold)


def finetune_config(init, arch, task_name, task, stats, run: Path, plan: DemoPlan, **changes):
    """The demo's fine-tuning settings for ``arch`` (from ``init``, a pretrained folder, or None:
    random) on ``task`` into ``run``: the plan's head, method, learning rates and time budget.
    ``changes`` replace fields (benchmarks/study_finetune.py runs them to a step count)."""
    name, overrides = _preset(arch, plan)
    frames = 100 if task_name == "keywords" else 200
    cfg = FinetuneConfig(
        **_timed_run(run, stats, plan, plan.finetune_minutes),
        checkpoint=str(init) if init else None,
        model=name,
        train=str(task["train"]),
        valid=str(task["valid"]),
        test=str(task["test"]),
        target_length=frames,
        fstride=16,
        tstride=16,
        freqm=12,
        timem=frames // 10,
        batch_size=min(plan.batch_size, sum(task["counts"]["train"].values())),
        lr=plan.finetune_lr,
        head_lr_mult=plan.finetune_head_lr_mult,
        pool=plan.finetune_pool,
        head_init=plan.finetune_head_init,
        layer_decay=plan.finetune_layer_decay,
        metric=plan.finetune_metric,
        model_overrides={} if init else overrides,
    )
    return replace(cfg, **changes)


def finetune_model(init, arch, task_name, task, stats, out: Path, plan: DemoPlan, progress):
    """Fine-tune as :func:`finetune_config` says; returns the run's summary."""
    run = out / "runs" / f"finetune_{task_name}_{arch}_{'pretrained' if init else 'random'}"
    cfg = finetune_config(init, arch, task_name, task, stats, run, plan, progress=progress)
    torch.manual_seed(plan.seed)
    with warnings.catch_warnings():
        # random initialisation is one of the demo's baselines, on purpose
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return finetune(cfg)


def logmel_baseline(task: dict, stats, name: str = "") -> float:
    """Logistic regression on per-band mean and std of the log-mel fbank (the simplest baseline
    a learned representation must beat), scored as :func:`probe` scores the models."""
    train = read_manifest(task["train"])
    folds = group_folds(task, FOLD_GROUPS[name]) if name in FOLD_GROUPS else None

    def features(manifest):
        feats, targets = [], []
        for i, example in enumerate(manifest.examples):
            fb = fbank(load_audio(example.path), normalize=stats)
            feats.append(torch.cat([fb.mean(0), fb.std(0)]).numpy())
            targets.append(manifest.targets(i).numpy())
        return np.stack(feats), np.stack(targets)

    if folds is not None:
        return fold_accuracy(*features(read_manifest(task["manifest"])), folds, train.classes)
    data = {"train": features(train)}
    for split in ("valid", "test"):
        data[split] = features(read_manifest(task[split], classes=train.classes))
    result = fit_probe(data, False, train.classes)
    return float(result["test"]["accuracy"])


# ---------------------------------------------------------------------------- the demo
def run_demo(
    out: str | Path = "demo_out", budget: float = 1.0, progress: bool = True, fold_probes=False
) -> dict:
    """The whole demo in ``out`` (data and pretrained models there are reused when their settings
    match); writes results.md, results.json, plots and README.md there and returns the report.
    ``fold_probes``: also the separate probes of every layer (:attr:`DemoPlan.fold_probes`)."""
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan = DemoPlan(fold_probes=fold_probes).scaled(budget)
    timings = {}

    t = time.time()
    data = build_data(out, plan, progress)
    stats_info = compute_stats(read_manifest(data["pretrain"]["manifest"]), progress=False)
    stats = (stats_info["mean"], stats_info["std"])
    timings["data"] = time.time() - t

    results: dict = {task: {} for task in TASKS}
    t = time.time()
    for task in TASKS:
        results[task]["log-mel + logistic regression"] = {
            "probe": logmel_baseline(data[task], stats, name=task if plan.fold_probes else "")
        }
    timings["baseline"] = time.time() - t

    t = time.time()
    pretrained = {
        arch: pretrain_model(arch, data, stats, out, plan, progress) for arch in plan.models
    }
    timings["pretrain"] = time.time() - t

    t = time.time()
    finetune_all(results, pretrained, data, stats, out, plan, progress)
    timings["finetune"] = time.time() - t

    probe_clips = {task: sum(data[task]["counts"]["test"].values()) for task in TASKS}
    if plan.fold_probes:
        t = time.time()
        probe_clips = probe_all(results, pretrained, data, stats, out, plan, progress)
        timings["probe"] = time.time() - t
    timings["total"] = time.time() - started

    report = make_report(budget, plan, stats, results, data, timings, pretrained, probe_clips)
    write_report(report, pretrained, out)
    return report


def _labels(plan: DemoPlan):
    """(arch, "pretrained" or "random", row label) of every model the demo evaluates."""
    for arch, init_kind in plan.rows:
        if arch in plan.models:
            yield arch, init_kind, f"{arch.upper()} {init_kind}"


def probe_all(results, pretrained, data, stats, out: Path, plan: DemoPlan, progress) -> dict:
    """Linear-probe test accuracy of every model on every task, into ``results``; returns the
    number of clips scored per task."""
    probe_clips: dict[str, int] = {}
    for arch, init_kind, label in _labels(plan):
        for task in TASKS:
            model = (
                load_model(pretrained[arch] / "final", pretrain_heads=False)
                if init_kind == "pretrained"
                else random_model(arch, stats, plan)
            )
            scored = probe(model, data[task], out, plan, progress, name=task)
            results[task].setdefault(label, {}).update(
                probe=scored["probe"], probe_views=scored["views"]
            )
            probe_clips[task] = scored["clips"]
    return probe_clips


def finetune_all(results, pretrained, data, stats, out: Path, plan: DemoPlan, progress) -> None:
    """Fine-tuned test accuracy of every model on every task, into ``results``."""
    for arch, init_kind, label in _labels(plan):
        init = pretrained[arch] / "final" if init_kind == "pretrained" else None
        for task in TASKS:
            summary = finetune_model(init, arch, task, data[task], stats, out, plan, progress)
            results[task].setdefault(label, {}).update(
                finetune=float(summary["test"]["acc"]),
                finetune_steps=summary["steps"],
                finetune_best_step=summary["best_step"],
            )
            if "head_probe" in summary:  # the probe head alone: step 0, on the same test clips
                start = summary["head_probe"]["test"]["accuracy"]
                results[task][label]["finetune_start"] = start
                if not plan.fold_probes:  # the demo's linear probe is that one
                    results[task][label]["probe"] = start

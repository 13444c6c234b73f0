"""``ssamba demo``: the whole pipeline on built-in real audio, SSAMBA versus SSAST.

1. Build the data (cached): an unlabelled pretraining mix and two labelled tasks whose test sets
   differ in kind from training (unseen TTS voices for keywords, unseen instruments).
2. Pretrain SSAMBA and SSAST of the same small size on the same data for the same time.
3. Fine-tune both, and SSAMBA from random initialisation, with LP-FT: each run starts from the
   linear probe of its final output, which is reported beside it; next to a log-mel +
   logistic-regression baseline (``fold_probes``: also the separate probes of every layer).
4. Write results.md / results.json, plots and a README to the output folder.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ssamba.audio import fbank, load_audio
from ssamba.checkpoints import RandomWeightsWarning, load_model
from ssamba.data import compute_stats, read_manifest
from ssamba.demo import builders
from ssamba.embeddings import layer_columns, num_layers
from ssamba.errors import UsageError
from ssamba.fileio import atomic_write, atomic_write_json, atomic_write_text
from ssamba.finetune import FinetuneConfig, finetune
from ssamba.models import create_model
from ssamba.pretrain import PretrainConfig, pretrain
from ssamba.probe import embed_labelled, fit_probe, linear_probes, view_layers
from ssamba.training import read_metrics

log = logging.getLogger(__name__)

TASKS = ("keywords", "instruments")


@dataclass
class DemoPlan:
    """Sizes and times of one demo run; ``scaled(budget)`` multiplies them."""

    # Test sets of 240 keyword and 160 instrument clips: with fewer, one clip is ~1 point and
    # differences between models drown in sampling noise.
    keywords_per_class: int = 100
    instruments_per_class: int = 80
    # 60 minutes of the growable mix: in the online-probe study (docs/demo.md) more audio gave
    # both models better keyword features at the same step (SSAST learned none from 12 minutes)
    # and instruments no worse; 240 minutes was no better beyond noise and takes 4x longer to build.
    pretrain_minutes_audio: float = 60.0
    pretrain_minutes: float = 3.0  # wall-clock pretraining time per model
    # wall-clock fine-tuning time per (model, task): in the study (docs/finetuning.md) no
    # variant moved pretrained SSAMBA past its LP-FT start within 300 steps, so a run gets
    # only the minutes that show it (and SSAST, whose steps are ~4x cheaper, what it can add)
    finetune_minutes: float = 0.5
    ssamba_depth: int = 4  # the presets' 2:1 layer ratio (24 Mamba layers : 12 ViT blocks)
    ssast_depth: int = 2
    # Probe on frequency bands (mean and std over time per band): a global mean over the patch
    # grid throws away the spectral layout that the log-mel baseline keeps. Every layer stream
    # is concatenated (as SUPERB-style probes do): after minutes of pretraining the last layer
    # is the most specialised to the pretext task.
    pooling: str = "bands+std"
    probe_layers: str = "all"  # "all" or "last"
    clip_frames: int = 200  # 2 s pretraining clips
    batch_size: int = 16
    lr: float = 5e-4
    # Fine-tuning, the paper's yardstick and the demo's headline (docs/finetuning.md, the
    # study): LP-FT, the head starting as the linear probe of the per-band means and standard
    # deviations of the final output (the probe's own view), a fast head and a gentle encoder.
    finetune_pool: str = "bands+std"
    finetune_lr: float = 1e-4
    finetune_head_lr_mult: float = 10.0
    finetune_head_init: str = "probe"
    finetune_layer_decay: float = 1.0
    # best/ by validation loss: on 240 clips one clip moves accuracy by 0.4 points, and in the
    # study a checkpoint that won by one clip lost 3.7 test points to the probe it started from
    finetune_metric: str = "loss"
    # The rows: SSAMBA pretrained against its random-init self and pretrained SSAST (SSAST from
    # random init taught nothing the other rows do not, and its runs cost demo minutes).
    rows: tuple = (("ssamba", "pretrained"), ("ssamba", "random"), ("ssast", "pretrained"))
    # The linear probe the demo reports: each fine-tuning run's own start (LP-FT's probe of the
    # final output, on the test split; no extra pass), or, with fold_probes, a separate probe of
    # every layer and the final output, the instruments over program folds (the earlier demos'
    # protocol: 3-4 more minutes).
    fold_probes: bool = False
    seed: int = 0
    models: tuple = ("ssamba", "ssast")
    extra: dict = field(default_factory=dict)

    def scaled(self, budget: float) -> DemoPlan:
        if budget <= 0:
            raise UsageError("budget must be > 0")
        plan = DemoPlan(**{**self.__dict__})
        plan.keywords_per_class = max(6, round(self.keywords_per_class * min(budget, 4) ** 0.5))
        plan.instruments_per_class = max(
            6, round(self.instruments_per_class * min(budget, 4) ** 0.5)
        )
        plan.pretrain_minutes_audio = self.pretrain_minutes_audio * budget
        plan.pretrain_minutes = self.pretrain_minutes * budget
        plan.finetune_minutes = self.finetune_minutes * budget
        return plan


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


def pretrain_config(arch: str, manifest, stats, run: Path, plan: DemoPlan, **changes):
    """The demo's pretraining settings for ``arch`` on ``manifest`` into ``run``: the plan's
    model, clip length, batch, lr and time budget. ``changes`` replace fields (the studies in
    benchmarks/ run the same settings to a step count instead of a time)."""
    name, overrides = _preset(arch, plan)
    cfg = PretrainConfig(
        out=str(run),
        model=name,
        train=str(manifest),
        target_length=plan.clip_frames,
        normalize=f"{stats[0]},{stats[1]}",
        batch_size=plan.batch_size,
        lr=plan.lr,
        warmup_steps=20,
        epochs=10_000,  # bounded by the time budget
        max_minutes=plan.pretrain_minutes,
        save_every=100_000,
        workers=0,  # tiny clips: loader processes would only take the cores from the model
        seed=plan.seed,
        progress=False,
        overwrite=True,
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


# Views of the model that the probe scores, from one embedding pass: every layer stream
# concatenated, and the final output alone (what `ssamba probe` scores by default).
PROBE_VIEWS = ("all", "last")
# A task whose held-out groups are few is probed over folds of them: the instruments test split
# holds 20 instruments (2 per family), and which 20 moves a probe by more than minutes of
# pretraining do (docs/demo.md). Each fold holds one group (program) per class out as test and
# the next as valid, and trains on the rest; every clip is scored once, by a probe that never
# heard its instrument. The keyword test split already holds ~90 unseen voices.
FOLD_GROUPS = {"instruments": "program"}
MIN_FOLDS = 3


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
        out=str(run),
        checkpoint=str(init) if init else None,
        model=name,
        train=str(task["train"]),
        valid=str(task["valid"]),
        test=str(task["test"]),
        target_length=frames,
        normalize=f"{stats[0]},{stats[1]}",
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
        epochs=10_000,
        max_minutes=plan.finetune_minutes,
        save_every=100_000,
        workers=0,  # tiny clips: loader processes would only take the cores from the model
        seed=plan.seed,
        progress=False,
        overwrite=True,
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


def make_report(
    budget, plan: DemoPlan, stats, results, data, timings, pretrained, probe_clips
) -> dict:
    report = {
        "budget": budget,
        "plan": {k: v for k, v in plan.__dict__.items() if k != "extra"},
        "normalization": {"mean": stats[0], "std": stats[1]},
        "results": results,
        "chance": {t: 1 / len(data[t]["classes"]) for t in TASKS},
        "test_clips": {t: sum(data[t]["counts"]["test"].values()) for t in TASKS},
        # clips the probes score: the test split, or every clip for a task probed over folds
        "probe_clips": probe_clips,
        "minutes": {k: round(v / 60, 2) for k, v in timings.items()},
        "pretraining": {arch: _pretrain_summary(pretrained[arch]) for arch in plan.models},
    }
    report["margins"] = margins(report)
    report["margins_finetune"] = margins(report, "finetune")
    return report


def report_text(report: dict) -> str:
    """The results table, the margins below it (fine-tuning, then the probe), fine-tuning
    against the probe, and the probe of each view (results.md, and what ``ssamba demo``
    prints)."""
    parts = [results_table(report)]
    if any("finetune" in row for rows in report["results"].values() for row in rows.values()):
        parts += [margins_text(report, "finetune"), start_table(report)]
    parts.append(margins_text(report))
    if report["plan"].get("fold_probes", True):  # (reports older than the option had them)
        parts.append(views_table(report))
    return "\n\n".join(parts)


def start_table(report: dict) -> str:
    """Each model's fine-tuned accuracy beside where it started: the probe head alone (LP, step
    0) on the same test clips; and the steps it ran, and the step ``best/`` was chosen at."""
    folds = report["plan"].get("fold_probes", False)
    lines = [
        "Fine-tuning from its start, the linear probe of the final output (LP: the probe head "
        "alone, step 0, on the same test clips; steps: run / chosen on valid"
        + ("; probe last: the separate probe of the final output)" if folds else ")")
        + ":",
        "",
        "| model | "
        + " | ".join(f"{t} LP | {t} fine-tuned | {t} steps" for t in TASKS)
        + (" | " + " | ".join(f"{t} probe last" for t in TASKS) if folds else "")
        + " |",
        "|---|" + "---|---|---|" * len(TASKS) + ("---|" * len(TASKS) if folds else ""),
    ]
    for label in report["results"][TASKS[0]]:
        rows = [report["results"][t].get(label, {}) for t in TASKS]
        if all("finetune" not in r for r in rows):
            continue
        cells = []
        for r in rows:
            steps = f"{r.get('finetune_steps', '–')} / {r.get('finetune_best_step', '–')}"
            cells += [_pct(r.get("finetune_start")), _pct(r.get("finetune")), steps]
        if folds:
            cells += [_pct((r.get("probe_views") or {}).get("last")) for r in rows]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def views_table(report: dict) -> str:
    """Linear-probe accuracy of every model on every layer stream together and on the final
    output alone (the same embeddings)."""
    lines = [
        "Linear probe by view (all: every layer stream concatenated; last: the final output):",
        "",
        "| model | " + " | ".join(f"{t} all | {t} last" for t in TASKS) + " |",
        "|---|" + "---|---|" * len(TASKS),
    ]
    for label in report["results"][TASKS[0]]:
        views = [report["results"][t].get(label, {}).get("probe_views") for t in TASKS]
        if all(v is None for v in views):
            continue
        cells = [_pct((v or {}).get(k)) for v in views for k in PROBE_VIEWS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: dict, pretrained: dict, out: Path) -> None:
    """results.json, results.md, the plots and README.md in ``out``."""
    atomic_write_json(out / "results.json", report, default=str)
    table = report_text(report)
    atomic_write_text(out / "results.md", table + "\n")
    write_plots(report, pretrained, out)
    write_readme(report, table, out)


def _pretrain_summary(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    return {"steps": summary["steps"], "seconds": summary["seconds"], **summary["last_train"]}


def results_table(report: dict) -> str:
    chance = report["chance"]
    header = "| model | " + " | ".join(f"{t} fine-tune | {t} probe" for t in TASKS) + " |"
    rule = "|---|" + "---|---|" * len(TASKS)
    lines = [header, rule]
    labels = list(report["results"][TASKS[0]])
    for label in labels:
        cells = []
        for task in TASKS:
            row = report["results"][task].get(label, {})
            cells += [_pct(row.get("finetune")), _pct(row.get("probe"))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(
        "| chance | " + " | ".join(f"{_pct(chance[t])} | {_pct(chance[t])}" for t in TASKS) + " |"
    )
    return "\n".join(lines)


HEADLINE = "SSAMBA pretrained"
RIVALS = {  # whom the headline model is measured against, by evaluation
    "probe": ("log-mel + logistic regression", "SSAMBA random", "SSAST pretrained"),
    "finetune": ("SSAMBA random", "SSAST pretrained"),
}
WHAT = {"probe": "linear probe", "finetune": "fine-tuned"}


def margins(report: dict, key: str = "probe") -> dict:
    """Test accuracy (``key``: "probe" or "finetune") of pretrained SSAMBA minus each rival's,
    in points, per task."""
    out = {}
    for task in TASKS:
        rows = report["results"][task]
        ours = rows.get(HEADLINE, {}).get(key)
        out[task] = {
            rival: round(100 * (ours - rows[rival][key]), 1)
            for rival in RIVALS[key]
            if ours is not None and rows.get(rival, {}).get(key) is not None
        }
    return out


def _probe_clips(report: dict, task: str) -> int:
    """Clips the probes scored on ``task`` (reports older than the folds: the test split)."""
    return report.get("probe_clips", {}).get(task, report["test_clips"][task])


def _clips(report: dict, task: str, key: str) -> int:
    return _probe_clips(report, task) if key == "probe" else report["test_clips"][task]


def probe_se(report: dict, task: str, key: str = "probe") -> float:
    """One standard error, in points, of the headline model's accuracy (``key``) on ``task``."""
    n = _clips(report, task, key)
    acc = report["results"][task][HEADLINE][key]
    return 100 * (acc * (1 - acc) / n) ** 0.5


def margins_text(report: dict, key: str = "probe") -> str:
    # A margin within one standard error is not counted as a win: the demo's claim is that
    # pretraining helps, and a margin the size of sampling noise does not show that.
    found = report.get("margins_" + key) if key != "probe" else report["margins"]
    found = found if found is not None else margins(report, key)
    lines = [f"{HEADLINE}, {WHAT[key]}, test accuracy margin in points:"]
    for task, row in found.items():
        n = _clips(report, task, key)
        shown = ", ".join(f"{v:+.1f} vs {k}" for k, v in row.items())
        scored = (
            f"{n} clips scored over {FOLD_GROUPS[task]} folds"
            if key == "probe" and task in FOLD_GROUPS and n != report["test_clips"][task]
            else f"{n} test clips"
        )
        se = probe_se(report, task, key)
        lines.append(f"- {task} ({scored}, one accuracy's standard error ~{se:.1f}): {shown}")
    for rival in RIVALS[key]:
        short = {
            task: row.get(rival)  # None: that rival was not run
            for task, row in found.items()
            if row.get(rival) is None or row[rival] <= probe_se(report, task, key)
        }
        if short:
            shown = ", ".join(
                f"{task} ({'not run' if m is None else f'{m:+.1f}'})" for task, m in short.items()
            )
            lines.append(
                f"- {HEADLINE} does NOT beat {rival} by more than one standard error on: {shown}"
            )
        else:
            lines.append(
                f"- {HEADLINE} beats {rival} by more than one standard error on every held-out"
                " test set"
            )
    return "\n".join(lines)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def write_plots(report: dict, pretrained: dict, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is missing: no plots (pip install 'ssamba[plot]')")
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for arch, run in pretrained.items():
        records = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
        axes[0].plot([r["step"] for r in records], [r["acc"] for r in records], label=arch)
        axes[1].plot([r["step"] for r in records], [r["mse"] for r in records], label=arch)
    axes[0].set_title("pretraining: masked-patch accuracy")
    axes[1].set_title("pretraining: reconstruction MSE")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_write(
        out / "pretraining_curves.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png")
    )
    plt.close(fig)

    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.6))
    for ax, task in zip(axes, TASKS, strict=True):
        rows = report["results"][task]
        labels = list(rows)
        x = np.arange(len(labels))
        probe = [100 * (rows[k].get("probe") or 0) for k in labels]
        tune = [100 * (rows[k].get("finetune") or 0) for k in labels]
        ax.bar(x - 0.2, probe, 0.4, label="linear probe")
        ax.bar(x + 0.2, tune, 0.4, label="fine-tune")
        ax.axhline(100 * report["chance"][task], color="gray", ls="--", lw=1, label="chance")
        ax.set_xticks(
            x, [k.replace(" + ", "\n+ ").replace(" ", "\n", 1) for k in labels], fontsize=7
        )
        ax.set_title(f"{task}: test accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / "accuracy.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def write_readme(report: dict, table: str, out: Path) -> None:
    plan = report["plan"]
    layers = "every layer, concatenated" if plan["probe_layers"] == "all" else "the last layer"
    head = (
        "LP-FT: the head starts as the linear probe of those features, and step 0 is validated"
        if plan["finetune_head_init"] == "probe"
        else "a fresh head"
    )
    if plan.get("fold_probes"):
        probe = (
            f"then a separate linear probe on frozen clip embeddings ({plan['pooling']} pooling "
            f"of the patch tokens of {layers})"
        )
        folds = (
            " (the probes of the instruments over program folds: every clip once, by a probe "
            "that never heard its instrument)"
        )
    else:
        probe = "the linear probe is each run's start (LP), scored on the same test clips"
        folds = ""
    text = f"""# ssamba demo results

What ran (budget {report["budget"]}, {report["minutes"]["total"]} minutes in all):
- data: an unlabelled pretraining mix of {plan["pretrain_minutes_audio"]:.0f} minutes (TTS speech,
  soundfont notes, recorded effects/ambience/music); keyword spotting (12 classes, test voices
  unseen in training); instrument families (10 classes, test instruments unseen in training).
- pretraining: SSAMBA ({plan["ssamba_depth"]} Mamba layers) and SSAST ({plan["ssast_depth"]}
  ViT blocks), width 192, {plan["pretrain_minutes"]:.1f} minutes each on the same clips
  (steps: {", ".join(f"{k} {v['steps']}" for k, v in report["pretraining"].items())}).
- evaluation, the paper's way first: fine-tuning of every model on each task for
  {plan["finetune_minutes"]:.1f} minutes a run (head: {plan["finetune_pool"]} of the final output;
  {head}; layer decay {plan["finetune_layer_decay"]}); {probe}; a log-mel + logistic
  regression baseline. Test accuracy on held-out test splits{folds}:

{table}

Files: results.json (all numbers), pretraining_curves.png, accuracy.png, runs/ (every training
run with metrics.jsonl and models), data/ (the generated audio and manifests, cached).
"""
    atomic_write_text(out / "README.md", text)

"""The demo's report: ``results.json``, ``results.md`` (the results table, the margins, fine-tuning
against its starting probe, the probe of each view), the plots and the README of an output
folder, from the results the pipeline gathered."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ssamba.demo.plan import FOLD_GROUPS, PROBE_VIEWS, TASKS, DemoPlan
from ssamba.fileio import atomic_write, atomic_write_json, atomic_write_text
from ssamba.training import read_metrics

log = logging.getLogger(__name__)


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

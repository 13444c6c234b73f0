"""Which fine-tuning pays off on the demo's tasks: plain, LP-FT, LP-FT with layer decay?

    python benchmarks/study_finetune.py --out ft [--steps 300] [--eval-every 50] [--max-minutes 60]
        [--tasks keywords instruments] [--runs ssamba/pretrained/lp-ft ...]

Builds the demo's data (``ssamba.demo.pipeline.build_data``, reused when present) and pretrains
the demo's SSAMBA and SSAST with the demo's settings to the step counts an idle demo run reaches
in its 3 minutes (``--pretrain-steps``; by steps, so that a loaded machine gives the same
models). Then it fine-tunes, with the demo's settings (``ssamba.demo.pipeline.finetune_config``)
to ``--steps`` steps, on both tasks:

- SSAMBA pretrained and SSAMBA random init, each plain (random head), LP-FT (``--head-init
  probe``) and, for the pretrained model, LP-FT with ``--layer-decay 0.75``;
- SSAST pretrained, plain and LP-FT.

The learning rate is constant (no warm-up, no decay), so a run stopped at step k is this run's
first k steps: every ``--eval-every`` steps a checkpoint is kept and validated, and the test
accuracy at budget k is that of the checkpoint with the best validation accuracy up to k (step 0,
an LP-FT run's probe head, included), as ``best/`` would be. Writes OUT/finetune.jsonl (a row
per run, appended as done: a restart resumes), OUT/finetune.md and OUT/finetune.png.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import warnings
from pathlib import Path

import torch

from ssamba.checkpoints import RandomWeightsWarning, load_model
from ssamba.data import compute_stats, read_manifest
from ssamba.demo.pipeline import (
    TASKS,
    DemoPlan,
    build_data,
    finetune_config,
    pretrain_config,
)
from ssamba.finetune import FinetuneTask, finetune
from ssamba.metrics import accuracy
from ssamba.pretrain import pretrain
from ssamba.training import Distributed, eval_loader, read_metrics

METHODS = {  # name -> FinetuneConfig changes (the rest: the demo's plan)
    "plain": {"head_init": "random", "layer_decay": 1.0},
    "lp-ft": {"head_init": "probe", "layer_decay": 1.0},
    "lp-ft + decay 0.75": {"head_init": "probe", "layer_decay": 0.75},
    "lp-ft, head lr x1": {"head_init": "probe", "layer_decay": 1.0, "head_lr_mult": 1.0},
    "lp-ft, lr 2e-5, head x1": {"head_init": "probe", "lr": 2e-5, "head_lr_mult": 1.0},
    "lp-ft, warm-up 50, head x1": {"head_init": "probe", "warmup_steps": 50, "head_lr_mult": 1.0},
    "lp-ft, no SpecAugment": {"head_init": "probe", "freqm": 0, "timem": 0},
    "lp-ft, no SpecAugment, head x1": {
        "head_init": "probe",
        "freqm": 0,
        "timem": 0,
        "head_lr_mult": 1.0,
    },
}
RUNS = [  # (arch, init, method)
    ("ssamba", "pretrained", "plain"),
    ("ssamba", "pretrained", "lp-ft"),
    ("ssamba", "pretrained", "lp-ft + decay 0.75"),
    ("ssamba", "random", "plain"),
    ("ssamba", "random", "lp-ft"),
    ("ssast", "pretrained", "plain"),
    ("ssast", "pretrained", "lp-ft"),
]


def pretrained_models(out: Path, data: dict, stats, plan: DemoPlan, steps: dict) -> dict:
    found = {}
    for arch in plan.models:
        run = out / "pretrain" / arch
        if not (run / "final" / "model.safetensors").exists():
            cfg = pretrain_config(arch, data["pretrain"]["manifest"], stats, run, plan,
                                  max_minutes=None, max_steps=steps[arch])  # fmt: skip
            pretrain(cfg)
        found[arch] = run / "final"
    return found


def test_accuracy(cfg, classes: list[str], folder: Path, test_set) -> float:
    """Test accuracy of the model saved in ``folder`` (a checkpoint of the run)."""
    model = load_model(folder)
    task = FinetuneTask(cfg, model, classes)
    dist = Distributed.from_env("cpu")
    scores, targets = task.predict(eval_loader(test_set, dist, cfg.batch_size), dist)
    return accuracy(scores.numpy(), targets.numpy())


def run_one(out: Path, arch: str, init: str, method: str, task_name: str, data, stats, plan,
            pretrained: dict, steps: int, eval_every: int) -> dict:  # fmt: skip
    from ssamba.data import AudioDataset

    run = out / "runs" / f"{task_name}_{arch}_{init}_{method.replace(' ', '')}"
    cfg = finetune_config(
        pretrained[arch] if init == "pretrained" else None, arch, task_name, data[task_name],
        stats, run, plan, max_minutes=None, max_steps=steps, eval_every=eval_every,
        save_every=eval_every, keep=10_000, pool="bands+std", **METHODS[method],
    )  # fmt: skip
    torch.manual_seed(plan.seed)
    started = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        summary = finetune(cfg)
    seconds = time.time() - started
    classes = json.loads((run / "final" / "classes.json").read_text())
    test_set = AudioDataset(read_manifest(cfg.test, classes=classes), cfg.target_length,
                            (stats[0], stats[1]), train=False)  # fmt: skip
    records = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "valid"]
    valid = {r["step"]: r["acc"] for r in records}
    losses = {r["step"]: r.get("loss") for r in records}
    tests = {}
    if "head_probe" in summary:
        tests[0] = summary["head_probe"]["test"]["accuracy"]
    for ckpt in (run / "checkpoints").glob("step_*"):
        step = int(ckpt.name.split("_")[1])
        if step in valid:
            tests[step] = test_accuracy(cfg, classes, ckpt, test_set)
    curve = []
    best = (-math.inf, None)  # by validation accuracy, as best/ with --metric acc
    least = (math.inf, None)  # by validation loss, as best/ with --metric loss
    for step in sorted(valid):
        if valid[step] > best[0]:  # a strictly better validation result
            best = (valid[step], step)
        if losses[step] is not None and losses[step] < least[0]:
            least = (losses[step], step)
        point = {"step": step, "valid": valid[step], "test": tests[best[1]], "best_step": best[1]}
        if least[1] is not None:
            point.update(valid_loss=losses[step], test_by_loss=tests[least[1]],
                         best_step_by_loss=least[1])  # fmt: skip
        curve.append(point)
    shutil.rmtree(run / "checkpoints")  # (the curve is what the study keeps)
    return {
        "task": task_name, "arch": arch, "init": init, "method": method, "steps": summary["steps"],
        "seconds": round(seconds, 1), "train_seconds": summary["seconds"],
        "test_clips": len(test_set), "head_probe": summary.get("head_probe"), "curve": curve,
    }  # fmt: skip


def se(acc: float, n: int) -> float:
    return 100 * math.sqrt(acc * (1 - acc) / n)


def write_report(rows: list[dict], out: Path, budgets: list[int]) -> None:
    lines = [
        "Test accuracy (%, one standard error beside) at fine-tuning budgets of k steps (the best",
        "validation checkpoint up to k, as best/ is chosen); LP = the probe head alone (step 0).",
        "",
    ]
    for task in TASKS:
        lines += [f"### {task}", ""]
        lines.append("| model | method | LP | " + " | ".join(f"{b} steps" for b in budgets)
                     + " | s/step |")  # fmt: skip
        lines.append("|---|---|---|" + "---|" * (len(budgets) + 1))
        for row in (r for r in rows if r["task"] == task):
            n = row["test_clips"]
            probe = row["head_probe"]["test"]["accuracy"] if row["head_probe"] else None
            cells = ["–" if probe is None else f"{100 * probe:.1f} ± {se(probe, n):.1f}"]
            for b in budgets:
                points = [p for p in row["curve"] if p["step"] <= b]
                acc = points[-1]["test"] if points else None
                cells.append("–" if acc is None else f"{100 * acc:.1f} ± {se(acc, n):.1f}")
            per_step = row["train_seconds"] / max(row["steps"], 1)
            lines.append(f"| {row['arch'].upper()} {row['init']} | {row['method']} | "
                         + " | ".join(cells) + f" | {per_step:.2f} |")  # fmt: skip
        lines.append("")
    (out / "finetune.md").write_text("\n".join(lines))
    plot(rows, out)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4))
    for ax, task in zip(axes, TASKS, strict=True):
        for row in (r for r in rows if r["task"] == task):
            steps = [p["step"] for p in row["curve"]]
            acc = [100 * p["test"] for p in row["curve"]]
            style = "-" if row["init"] == "pretrained" else ":"
            ax.plot(steps, acc, style, marker=".",
                    label=f"{row['arch'].upper()} {row['init']}, {row['method']}")  # fmt: skip
        ax.set_title(f"{task}: test accuracy of best/ (%)")
        ax.set_xlabel("fine-tuning steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "finetune.png", dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--pretrain-steps", type=int, nargs=2, default=[158, 690],
                    metavar=("SSAMBA", "SSAST"))  # fmt: skip
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="start no new run after this many minutes")  # fmt: skip
    ap.add_argument("--tasks", nargs="+", default=list(TASKS))
    ap.add_argument("--runs", nargs="+", metavar="ARCH/INIT/METHOD",
                    help="the runs, in order (default: the grid of RUNS)")  # fmt: skip
    args = ap.parse_args()
    runs = [tuple(r.split("/")) for r in args.runs] if args.runs else RUNS
    started = time.time()
    plan = DemoPlan()
    data = build_data(args.out, plan, progress=False)
    info = compute_stats(read_manifest(data["pretrain"]["manifest"]), progress=False)
    stats = (info["mean"], info["std"])
    steps = dict(zip(plan.models, args.pretrain_steps, strict=True))
    pretrained = pretrained_models(args.out, data, stats, plan, steps)
    rows_file = args.out / "finetune.jsonl"
    rows = [json.loads(line) for line in rows_file.open()] if rows_file.exists() else []
    done = {(r["task"], r["arch"], r["init"], r["method"]) for r in rows}
    for task in args.tasks:
        for arch, init, method in runs:
            if (task, arch, init, method) in done:
                continue
            if args.max_minutes and time.time() - started > 60 * args.max_minutes:
                print("time budget spent: stopping (rerun to resume)", flush=True)
                break
            row = run_one(args.out, arch, init, method, task, data, stats, plan, pretrained,
                          args.steps, args.eval_every)  # fmt: skip
            rows.append(row)
            with rows_file.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    budgets = sorted({args.eval_every, args.steps // 2, args.steps})
    write_report(rows, args.out, budgets)


if __name__ == "__main__":
    main()

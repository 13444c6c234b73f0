"""Would a longer pretraining lift the demo's instrument probe? The demo's run, to more steps.

    python benchmarks/study_steps.py --out steps [--steps 800] [--save-every 80]

Builds the demo's data (``ssamba.demo.pipeline.build_data``, reused when present), pretrains the
demo's SSAMBA-tiny with the demo's settings on its 60-minute mix for ``--steps`` steps instead of 3
minutes, keeping a checkpoint every ``--save-every`` steps and at each epoch's end, and scores the
random initialisation (step 0) and every checkpoint with the demo's probe
(``ssamba.demo.pipeline.probe``): keywords on the test split, instruments over program folds,
every layer stream ("all") and the final output ("last"). The learning rate is constant after
the 20 warm-up steps, so the checkpoint at step k is the model a run stopped at step k gives.

Writes OUT/steps.jsonl (a row per step, appended as scored, so a restart resumes) and
OUT/steps.md; the run lives in OUT/run and is reused when complete.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ssamba.checkpoints import load_model
from ssamba.data import compute_stats, read_manifest
from ssamba.demo.pipeline import (
    TASKS,
    DemoPlan,
    build_data,
    pretrain_config,
    probe,
    random_model,
)
from ssamba.pretrain import pretrain


def pretrain_run(run: Path, data: dict, stats, plan: DemoPlan, steps: int, save_every: int):
    if (run / "final" / "model.safetensors").exists():
        return
    cfg = pretrain_config(
        "ssamba",
        data["pretrain"]["manifest"],
        stats,
        run,
        plan,
        max_minutes=None,
        max_steps=steps,
        save_every=save_every,
        keep=10_000,  # every checkpoint is a point of the curve
    )
    pretrain(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--save-every", type=int, default=80)
    args = ap.parse_args()
    plan = DemoPlan()
    data = build_data(args.out, plan, progress=False)
    info = compute_stats(read_manifest(data["pretrain"]["manifest"]), progress=False)
    stats = (info["mean"], info["std"])
    run = args.out / "run"
    t = time.time()
    pretrain_run(run, data, stats, plan, args.steps, args.save_every)
    print(f"pretraining: {time.time() - t:.0f} s", flush=True)

    rows_file = args.out / "steps.jsonl"
    rows = [json.loads(line) for line in rows_file.open()] if rows_file.exists() else []
    done = {row["step"] for row in rows}
    checkpoints = sorted(run.glob("checkpoints/step_*"), key=lambda p: int(p.name.split("_")[1]))
    points = [(0, None)] + [(int(p.name.split("_")[1]), p) for p in checkpoints]
    for step, path in points:
        if step in done:
            continue
        row = {"step": step}
        for task in TASKS:
            model = (
                random_model("ssamba", stats, plan)
                if path is None
                else load_model(path, pretrain_heads=False)
            )
            row[task] = probe(model, data[task], args.out, plan, False, name=task)["views"]
        rows.append(row)
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    floor = next(row for row in rows if row["step"] == 0)
    lines = [
        "| step | " + " | ".join(f"{t} all / last (all minus step 0)" for t in TASKS) + " |",
        "|---:|" + "---|" * len(TASKS),
    ]
    for row in sorted(rows, key=lambda r: r["step"]):
        cells = [
            f"{100 * row[t]['all']:.1f} / {100 * row[t]['last']:.1f}"
            f" ({100 * (row[t]['all'] - floor[t]['all']):+.1f})"
            for t in TASKS
        ]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    (args.out / "steps.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

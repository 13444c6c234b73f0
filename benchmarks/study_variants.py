"""Does any change to the demo's pretraining lift the probe on unseen instruments?

    python benchmarks/study_variants.py --out variants [--steps 160] [--variants base,mpg,...]

Pretrains the demo's SSAMBA-tiny (depth 4, batch 16 two-second clips, lr 5e-4, 20 warm-up steps)
for a fixed number of steps (160: about what the demo's 3 minutes give on 2 cores) on the first
60 minutes of the growable pretraining mix, once per variant of one setting, and scores each
model, and the random initialisation it starts from, with the demo's probe
(``ssamba.demo.pipeline.probe``): keywords on the test split (unseen voices); instruments over
program folds (every clip scored by a probe that never heard its instrument) and on the fixed test
split (20 instruments), each for every layer stream ("all") and for the final output ("last").

Writes OUT/variants.json and OUT/variants.md; runs live in OUT/runs and are reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from ssamba.checkpoints import load_model
from ssamba.data import compute_stats, read_manifest
from ssamba.demo import builders
from ssamba.demo.pipeline import DemoPlan, pretrain_config, probe, random_model
from ssamba.pretrain import pretrain

CLIP_SECONDS = 2.0
MIX_MINUTES = 60
# name -> (what changes, PretrainConfig overrides); "music50" pretrains on another mix (below)
VARIANTS = {
    "base": ("the demo's settings", {}),
    "music50": ("half the mix music (25% in the demo's)", {}),
    "lr2e-4": ("lr 2e-4 instead of 5e-4", {"lr": 2e-4}),
    "mpg": ("MSE (generative) loss only", {"objective": "mpg"}),
    "mpc": ("InfoNCE (discriminative) loss only", {"objective": "mpc"}),
    "mask-random": ("random patches masked, not clusters", {"mask_mode": "random"}),
    "mask-frame": ("whole frames masked", {"mask_mode": "frame"}),
    "mask48": ("48 of 96 patches masked, not 75", {"mask_patch": 48}),
}
MUSIC50 = {"music": 900, "mixture": 300, "speech": 300, "recorded": 150, "noise": 150}


def build(out: Path, plan: DemoPlan) -> dict:
    data = out / "data"
    mix = builders.build_pretrain_mix(
        data / "pretrain", minutes=4 * MIX_MINUTES, seed=plan.seed, seconds=CLIP_SECONDS
    )
    root = Path(mix["manifest"]).parent
    lines = Path(mix["manifest"]).read_text().splitlines(keepends=True)
    base = root / f"manifest_{MIX_MINUTES}min.txt"
    base.write_text("".join(lines[: round(MIX_MINUTES * 60 / CLIP_SECONDS)]))
    # the same number of clips, music-heavy: the first clips of each kind, in mix order
    with open(root / "meta.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    left, music = dict(MUSIC50), []
    for row in rows:
        if left.get(row["kind"], 0) > 0:
            left[row["kind"]] -= 1
            music.append(row["path"] + "\n")
    (root / "manifest_music50.txt").write_text("".join(music))
    tasks = {
        "keywords": builders.build_keywords(
            data / "keywords", per_class=plan.keywords_per_class, seed=plan.seed
        ),
        "instruments": builders.build_instruments(
            data / "instruments", per_class=plan.instruments_per_class, seed=plan.seed
        ),
    }
    return {"mix": base, "music50": root / "manifest_music50.txt", "tasks": tasks}


def pretrained(name: str, data: dict, stats, out: Path, plan: DemoPlan, steps: int):
    run = out / "runs" / name
    if not (run / "final" / "model.safetensors").exists():
        cfg = pretrain_config(
            "ssamba",
            data["music50"] if name == "music50" else data["mix"],
            stats,
            run,
            plan,
            max_minutes=None,
            max_steps=steps,
            **VARIANTS[name][1],
        )
        pretrain(cfg)
    return load_model(run / "final", pretrain_heads=False)


def scores(model, data: dict, out: Path, plan: DemoPlan) -> dict:
    tasks = data["tasks"]
    return {
        "keywords": probe(model, tasks["keywords"], out, plan, False, name="keywords")["views"],
        "instruments folds": probe(model, tasks["instruments"], out, plan, False, "instruments")[
            "views"
        ],
        "instruments test": probe(model, tasks["instruments"], out, plan, False)["views"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    plan = DemoPlan()
    data = build(args.out, plan)
    info = compute_stats(read_manifest(data["mix"]), progress=False)
    stats = (info["mean"], info["std"])
    results = {"random": {"what": "random initialisation (the floor)"}}
    results["random"].update(scores(random_model("ssamba", stats, plan), data, args.out, plan))
    for name in args.variants.split(","):
        t = time.time()
        model = pretrained(name, data, stats, args.out, plan, args.steps)
        results[name] = {"what": VARIANTS[name][0], **scores(model, data, args.out, plan)}
        print(name, json.dumps(results[name]), f"{time.time() - t:.0f} s", flush=True)
    (args.out / "variants.json").write_text(json.dumps(results, indent=1))
    cols = ("keywords", "instruments folds", "instruments test")
    lines = [
        "| variant | " + " | ".join(f"{c} all / last" for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for name, row in results.items():
        cells = [f"{100 * row[c]['all']:.1f} / {100 * row[c]['last']:.1f}" for c in cols]
        lines.append(f"| {name}: {row['what']} | " + " | ".join(cells) + " |")
    (args.out / "variants.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

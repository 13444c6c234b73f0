"""What does the demo's pretraining learn, and when? Online-probe curves vs pretraining steps.

    python benchmarks/study_probe.py --out study [--minutes 12,60,240] [--archs ssamba,ssast]
        [--steps 600] [--probe-every 75]
    python benchmarks/study_probe.py --out study --plot-only     # re-draw from the runs

Pretrains the demo's models (SSAMBA-tiny depth 4 and SSAST-tiny depth 2, the demo's batch, lr,
2-s clips) for a fixed number of steps on the first N minutes of one growable pretraining mix
(``ssamba data pretrain-mix``: clip i is the same whatever the size, so 12 minutes is a prefix of
60, which is a prefix of 240), with the online probe (``ssamba pretrain --probe``) on the demo's
two labelled tasks: keywords spoken by voices not heard in training, instruments not heard in
training. The probe is fit on each task's train split and scored on its valid split (the test
splits stay untouched: the demo reports those). Step 0 is the random initialisation: the floor.

Writes OUT/study.json (every probe point) and OUT/probe_study.png; runs live in OUT/runs and are
reused when their summary exists, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ssamba.data import compute_stats, read_manifest
from ssamba.demo import builders
from ssamba.demo.pipeline import TASKS, DemoPlan
from ssamba.pretrain import PretrainConfig, pretrain
from ssamba.training import read_metrics

CLIP_SECONDS = 2.0


def build_data(out: Path, max_minutes: float, plan: DemoPlan, seed: int) -> dict:
    """The demo's two tasks and one pretraining mix of ``max_minutes`` (cached builds)."""
    data = out / "data"
    tasks = {
        "keywords": builders.build_keywords(
            data / "keywords", per_class=plan.keywords_per_class, seed=seed, progress=True
        ),
        "instruments": builders.build_instruments(
            data / "instruments", per_class=plan.instruments_per_class, seed=seed, progress=True
        ),
    }
    mix = builders.build_pretrain_mix(
        data / "pretrain", minutes=max_minutes, seed=seed, seconds=CLIP_SECONDS, progress=True
    )
    return {"tasks": tasks, "mix": Path(mix["manifest"])}


def prefix_manifest(mix: Path, minutes: float) -> Path:
    """The first ``minutes`` of the mix as a manifest of its own (beside the full one)."""
    lines = mix.read_text().splitlines(keepends=True)
    n = max(1, round(minutes * 60 / CLIP_SECONDS))
    if n > len(lines):
        raise SystemExit(f"{mix}: {len(lines)} clips, {n} wanted for {minutes} minutes")
    path = mix.with_name(f"manifest_{minutes:g}min.txt")
    path.write_text("".join(lines[:n]))
    return path


def run_one(out: Path, arch: str, minutes: float, manifest: Path, stats, tasks, args, plan):
    run = out / "runs" / f"{arch}_{minutes:g}min"
    if (run / "summary.json").is_file():
        print(f"{run.name}: done earlier, reused")
        return run
    depth = plan.ssamba_depth if arch == "ssamba" else plan.ssast_depth
    probes = [f"{t}={tasks[t]['train']},{tasks[t]['valid']}" for t in TASKS]
    cfg = PretrainConfig(
        out=str(run),
        model=f"{arch}_tiny",
        model_overrides={"depth": depth},
        train=str(manifest),
        target_length=plan.clip_frames,
        normalize=f"{stats[0]},{stats[1]}",
        batch_size=plan.batch_size,
        lr=plan.lr,
        warmup_steps=20,
        epochs=100_000,
        max_steps=args.steps,
        save_every=100_000,
        workers=0,
        seed=args.seed,
        progress=True,
        overwrite=True,
        probe=probes,
        probe_every=args.probe_every,
        probe_pooling=plan.pooling,
        probe_layers=list(range(depth // 2 if arch == "ssamba" else depth)),  # every layer stream
    )
    t0 = time.time()
    pretrain(cfg)
    print(f"{run.name}: {time.time() - t0:.0f} s")
    return run


def curves(run: Path) -> list[dict]:
    """One row per probe step: step, and per task the probe's score and kNN score."""
    rows = []
    for rec in read_metrics(run / "metrics.jsonl"):
        if "probe/score" not in rec:
            continue
        row = {"step": rec["step"], "seconds": rec.get("probe/seconds")}
        for t in TASKS:
            row[t] = rec.get(f"probe/{t}/score")
            row[f"{t}_knn"] = rec.get(f"probe/{t}/knn")
        rows.append(row)
    return rows


def plot(study: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(11, 4.2), sharex=True)
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    colours = dict(zip(study["minutes"], palette, strict=False))
    styles = {"ssamba": "-", "ssast": "--"}
    for ax, task in zip(axes, TASKS, strict=True):
        for key, rows in study["runs"].items():
            arch, minutes = key.split("/")
            xs = [r["step"] for r in rows]
            ys = [100 * r[task] for r in rows]
            label = f"{arch.upper()}, {minutes} min"
            ax.plot(xs, ys, styles[arch], marker="o", ms=3, color=colours[float(minutes)],
                    label=label)  # fmt: skip
        ax.set_title(f"{task}: linear probe on held-out voices/instruments (valid)")
        ax.set_xlabel("pretraining steps (batch 16, 2-s clips); step 0 = random init")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--minutes", default="12,60,240", help="corpus sizes (default: 12,60,240)")
    p.add_argument("--archs", default="ssamba,ssast", help="default: ssamba,ssast")
    p.add_argument("--steps", type=int, default=600, help="steps per run (default: 600)")
    p.add_argument("--probe-every", type=int, default=75, help="default: 75")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--plot-only", action="store_true", help="re-draw from the runs in OUT/runs")
    args = p.parse_args()
    minutes = [float(m) for m in args.minutes.split(",")]
    archs = args.archs.split(",")
    plan = DemoPlan()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        data = build_data(out, max(minutes), plan, args.seed)
        first = prefix_manifest(data["mix"], min(minutes))
        info = compute_stats(read_manifest(first), progress=False)
        stats = (info["mean"], info["std"])  # one normalisation for every run
        for m in minutes:
            manifest = prefix_manifest(data["mix"], m)
            for arch in archs:
                run_one(out, arch, m, manifest, stats, data["tasks"], args, plan)
    study = {
        "minutes": minutes,
        "steps": args.steps,
        "probe_every": args.probe_every,
        "runs": {
            f"{a}/{m:g}": curves(out / "runs" / f"{a}_{m:g}min")
            for m in minutes
            for a in archs
            if (out / "runs" / f"{a}_{m:g}min" / "metrics.jsonl").is_file()
        },
    }
    (out / "study.json").write_text(json.dumps(study, indent=1))
    plot(study, out / "probe_study.png")
    print(f"wrote {out / 'study.json'} and {out / 'probe_study.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

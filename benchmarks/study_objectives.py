"""At equal minutes of pretraining, does the teacher objective teach the demo's SSAMBA-tiny more
than the paper's masked patch objective (``joint``)?

    python benchmarks/study_objectives.py --out objectives [--minutes 20] \\
        [--save-every-minutes 2] [--arms joint,teacher-drop,teacher-token] [--max-minutes 300]

Builds the demo's data (``ssamba.demo.pipeline.build_data``, reused when present) and pretrains
the demo's SSAMBA-tiny with the demo's settings (batch 16 two-second clips of the 60-minute mix,
lr 5e-4, 20 warm-up steps) once per arm for ``--minutes`` of wall-clock time each, one arm after
the other: ``joint`` (the paper's objective, the demo's), ``teacher-drop`` and ``teacher-token``
(``--objective teacher`` with ssamba's defaults, the hidden patches dropped from the student's
sequence or replaced by a mask token in place). Every checkpoint, and the random initialisation
all arms start from (minute 0), is scored with the demo's probe (``ssamba.demo.pipeline.probe``):
keywords on the test split (unseen voices), instruments over program folds (unseen
instruments), every layer stream ("all", the demo's headline) and the final output ("last").

Equal minutes: each arm first runs ``--calibration-steps`` steps to measure its cost per step,
and then checkpoints every ``round(save-every-minutes * 60 / seconds per step)`` steps, so its
checkpoints fall about every ``--save-every-minutes``. The minute of each checkpoint is measured
(the time its trainer state was written, from the start of the session that wrote it, plus the
minutes its session resumed from), and the arms are compared at the checkpoints nearest each
multiple of ``--save-every-minutes``. Run it on an otherwise idle machine: wall-clock time is the
currency here.

Resumable: calibrations (OUT/calibration.json), runs (OUT/runs/ARM, continued with ``--resume``
from their last checkpoint, with the session log OUT/runs/ARM/sessions.json) and scored points
(OUT/objectives.jsonl, a row per point, appended as scored) are reused when it is started again.
``--max-minutes`` bounds one invocation: it stops (leaving everything resumable) once that much
time has passed, cutting a run short at a checkpoint when need be.

Writes OUT/objectives.jsonl (raw), OUT/objectives.md (tables: cost per step, accuracy with one
standard error at each minute, differences against joint with their standard error, the peaks)
and OUT/objectives.png (accuracy against minutes, one panel per task).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from ssamba.checkpoints import load_model
from ssamba.data import compute_stats, read_manifest
from ssamba.demo.pipeline import TASKS, DemoPlan, build_data, pretrain_config, probe, random_model
from ssamba.pretrain import pretrain
from ssamba.training import read_metrics

# name -> (what it is, PretrainConfig changes to the demo's settings)
ARMS = {
    "joint": ("the paper's masked patch objective, InfoNCE + 10 x MSE (the demo's)", {}),
    "teacher-drop": (
        "EMA teacher, hidden patches dropped from the student's sequence",
        {"objective": "teacher", "hide_masked": "drop"},
    ),
    "teacher-token": (
        "EMA teacher, a learned mask token in place of the hidden patches",
        {"objective": "teacher", "hide_masked": "token"},
    ),
}
BASELINE = "joint"
VIEWS = ("all", "last")
DONE_SLACK_MINUTES = 0.05  # a run this close to its minutes is complete
MIN_SESSION_MINUTES = 0.5  # less study time than this left: stop instead of starting a run


class Budget:
    """``--max-minutes`` of this invocation."""

    def __init__(self, minutes: float | None):
        self.minutes, self.started = minutes, time.time()

    def left(self) -> float:
        if self.minutes is None:
            return math.inf
        return self.minutes - (time.time() - self.started) / 60


def read_json(path: Path, default):
    return json.loads(path.read_text()) if path.exists() else default


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


# ---------------------------------------------------------------------------- runs
def arm_config(arm: str, data: dict, stats, run: Path, plan: DemoPlan, **changes):
    return pretrain_config(
        "ssamba",
        data["pretrain"]["manifest"],
        stats,
        run,
        plan,
        **{**ARMS[arm][1], **changes},
    )


def calibrate(arm: str, data, stats, out: Path, plan: DemoPlan, steps: int) -> float:
    """Seconds per step of ``arm``: the median over steps 3.. of a short run (the first steps
    pay for compilation and warm-up)."""
    found = read_json(out / "calibration.json", {})
    if arm in found and found[arm]["steps"] == steps:
        return found[arm]["seconds_per_step"]
    run = out / "calibrate" / arm
    cfg = arm_config(arm, data, stats, run, plan, max_minutes=None, max_steps=steps,
                     save_every=100_000, log_every=1, keep=1)  # fmt: skip
    pretrain(cfg)
    records = [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]
    per_step = [plan.batch_size / r["clips_per_s"] for r in records if r["step"] > 2]
    found[arm] = {"steps": steps, "seconds_per_step": statistics.median(per_step)}
    write_json(out / "calibration.json", found)
    return found[arm]["seconds_per_step"]


def checkpoint_minutes(run: Path) -> dict[int, float]:
    """Step -> minutes of pretraining at which each checkpoint of ``run`` was written: as
    recorded in sessions.json (:func:`record_minutes`), else from its file's time."""
    log = read_json(run / "sessions.json", {"sessions": []})
    sessions, recorded = log["sessions"], log.get("minutes", {})
    out = {}
    for ckpt in run.glob("checkpoints/step_*"):
        state = ckpt / "trainer_state.pt"
        if not state.exists():
            continue
        step = int(ckpt.name.split("_")[1])
        if str(step) in recorded:
            out[step] = recorded[str(step)]
            continue
        written = state.stat().st_mtime
        own = [s for s in sessions if s["start"] <= written]
        if not own:
            continue
        session = max(own, key=lambda s: s["start"])
        out[step] = session["from_minutes"] + (written - session["start"]) / 60
    return dict(sorted(out.items()))


def record_minutes(run: Path) -> None:
    """Write every checkpoint's minute into sessions.json, so that copying the study (which
    changes file times) keeps them."""
    log = read_json(run / "sessions.json", {"sessions": []})
    log["minutes"] = {str(step): m for step, m in checkpoint_minutes(run).items()}
    write_json(run / "sessions.json", log)


def run_arm(arm, data, stats, out: Path, plan, minutes, save_every: int, budget: Budget) -> bool:
    """Pretrain ``arm`` until it has ``minutes`` of pretraining (continuing an earlier session
    from its last checkpoint); False when the study's budget stopped it first."""
    run = out / "runs" / arm
    log_file = run / "sessions.json"
    if log_file.exists():
        record_minutes(run)  # those of a session that was killed
    log = read_json(log_file, {"sessions": []})
    reached = checkpoint_minutes(run)
    from_step = max(reached, default=0)
    from_minutes = reached.get(from_step, 0.0)
    # A session that ran out its time wrote its last checkpoint at or past its end (its clock
    # starts before the loop's), so the last checkpoint says how far the arm got.
    remaining = minutes - from_minutes
    if remaining <= DONE_SLACK_MINUTES:
        return True
    left = budget.left()
    if left < MIN_SESSION_MINUTES:
        return False
    session = min(remaining, left)
    cfg = arm_config(arm, data, stats, run, plan, max_minutes=session, save_every=save_every,
                     keep=100_000, overwrite=False, resume=True)  # fmt: skip
    log["sessions"].append(
        {"start": time.time(), "from_step": from_step, "from_minutes": from_minutes}
    )
    write_json(log_file, log)
    print(f"{arm}: pretraining {session:.2f} min from step {from_step}", flush=True)
    pretrain(cfg)
    record_minutes(run)
    return session == remaining


# ---------------------------------------------------------------------------- scoring
def marks(minutes: float, every: float) -> list[float]:
    """The minutes at which the arms are compared: every ``every`` up to ``minutes``."""
    return [every * k for k in range(1, int(round(minutes / every)) + 1)]


def score_points(arms, data, stats, out: Path, plan: DemoPlan, budget: Budget, at):
    """Score the random initialisation and, of every arm, the checkpoint nearest each minute of
    ``at`` (the loop also checkpoints at every epoch's end: those between are left unscored),
    when not scored yet. Returns every row, and whether every point is scored."""
    rows_file = out / "objectives.jsonl"
    rows = [json.loads(line) for line in rows_file.open()] if rows_file.exists() else []
    done = {(r["arm"], r["step"]) for r in rows}
    points = [("init", 0, 0.0, None)]
    for arm in arms:
        found = checkpoint_minutes(out / "runs" / arm)
        chosen = {min(found, key=lambda s: abs(found[s] - m)) for m in at} if found else set()
        for step in sorted(chosen):
            path = out / "runs" / arm / "checkpoints" / f"step_{step:08d}"
            points.append((arm, step, found[step], path))
    for arm, step, minute, path in points:
        if (arm, step) in done:
            continue
        if budget.left() <= 0:
            print("the study's --max-minutes is spent: run it again to continue", flush=True)
            return rows, False
        t = time.time()
        row = {"arm": arm, "step": step, "minutes": round(minute, 3), "clips": {}}
        for task in TASKS:
            model = (
                random_model("ssamba", stats, plan)
                if path is None
                else load_model(path, pretrain_heads=False)
            )
            result = probe(model, data[task], out, plan, False, name=task)
            row[task], row["clips"][task] = result["views"], result["clips"]
        rows.append(row)
        with rows_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), f"({time.time() - t:.0f} s)", flush=True)
    return rows, True


# ---------------------------------------------------------------------------- report
def se(acc: float, n: int) -> float:
    """One standard error of an accuracy over ``n`` clips (binomial), in the same unit."""
    return math.sqrt(acc * (1 - acc) / n)


def pm(acc: float, n: int) -> str:
    return f"{100 * acc:.1f} ± {100 * se(acc, n):.1f}"


def diff(a: dict, b: dict, task: str, view: str) -> tuple[float, float]:
    """``a`` minus ``b`` in points, and its standard error (the two as independent: the same
    clips make it somewhat smaller, so this errs on the side of caution)."""
    pa, pb = a[task][view], b[task][view]
    s = math.hypot(se(pa, a["clips"][task]), se(pb, b["clips"][task]))
    return 100 * (pa - pb), 100 * s


def verdict(d: float, s: float) -> str:
    if d > s:
        return "teacher better by more than one standard error"
    if d < -s:
        return "teacher WORSE by more than one standard error"
    return "within one standard error: no difference shown"


def nearest(curve: list[dict], minute: float) -> dict:
    return min(curve, key=lambda r: abs(r["minutes"] - minute))


def peak(curve: list[dict], task: str, view: str) -> dict:
    """The best pretrained point of a curve (the random initialisation is the floor, not a
    peak; it stands for itself in the tables)."""
    trained = [r for r in curve if r["arm"] != "init"] or curve
    return max(trained, key=lambda r: r[task][view])


def curves(rows: list[dict], arms) -> dict[str, list[dict]]:
    init = [r for r in rows if r["arm"] == "init"]
    return {
        arm: sorted(init + [r for r in rows if r["arm"] == arm], key=lambda r: r["minutes"])
        for arm in arms
    }


def report(rows, arms, out: Path, minutes: float, every: float, view: str) -> str:
    found = curves(rows, arms)
    lines = [f"Probe accuracy (%) ± one standard error, view '{view}' "
             "(every layer stream: the demo's headline; 'last': the final output)", ""]  # fmt: skip
    # cost per step: over the whole run (checkpoints and set-up included), and as timed alone
    calibration = read_json(out / "calibration.json", {})
    lines += [
        "| arm | what | steps | minutes | seconds per step (run) | seconds per step (timed) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for arm in arms:
        last = found[arm][-1]
        cost = 60 * last["minutes"] / last["step"] if last["step"] else float("nan")
        timed = calibration.get(arm, {}).get("seconds_per_step", float("nan"))
        lines.append(
            f"| {arm} | {ARMS[arm][0]} | {last['step']} | {last['minutes']:.1f} | {cost:.2f} "
            f"| {timed:.2f} |"
        )
    # at equal minutes
    at = marks(minutes, every)
    head = "| minute | " + " | ".join(f"{arm} {task}" for task in TASKS for arm in arms) + " |"
    lines += ["", head, "|---:|" + "---:|" * (len(TASKS) * len(arms))]
    init = next((r for r in rows if r["arm"] == "init"), None)
    if init:
        cells = [pm(init[t][view], init["clips"][t]) for t in TASKS for _ in arms]
        lines.append("| 0 (random init) | " + " | ".join(cells) + " |")
    for mark in at:
        cells = []
        for task in TASKS:
            for arm in arms:
                r = nearest(found[arm], mark)
                cell = pm(r[task][view], r["clips"][task]) + f" ({r['minutes']:.1f} min)"
                if arm != BASELINE and BASELINE in arms:
                    d, s = diff(r, nearest(found[BASELINE], mark), task, view)
                    cell += f", {d:+.1f} ± {s:.1f}"
                cells.append(cell)
        lines.append(f"| {mark:g} | " + " | ".join(cells) + " |")
    lines += ["", "Differences against joint, in points ± one standard error:", ""]
    if BASELINE in arms:
        base = found[BASELINE]
        for arm in arms:
            if arm == BASELINE:
                continue
            for task in TASKS:
                end = diff(nearest(found[arm], minutes), nearest(base, minutes), task, view)
                peak_a = peak(found[arm], task, view)
                peak_b = peak(base, task, view)
                at_peak = diff(peak_a, peak_b, task, view)
                shown_a = pm(peak_a[task][view], peak_a["clips"][task])
                shown_b = pm(peak_b[task][view], peak_b["clips"][task])
                per_mark = [diff(nearest(found[arm], m), nearest(base, m), task, view) for m in at]
                mean = statistics.fmean(d for d, _ in per_mark) if per_mark else float("nan")
                lines.append(
                    f"- {arm} vs joint, {task}: at {minutes:g} min {end[0]:+.1f} ± {end[1]:.1f} "
                    f"({verdict(*end)}); peak against peak {at_peak[0]:+.1f} ± {at_peak[1]:.1f} "
                    f"({arm} {shown_a} at {peak_a['minutes']:.1f} min, joint {shown_b} at "
                    f"{peak_b['minutes']:.1f} min; {verdict(*at_peak)}); mean over the "
                    f"{len(per_mark)} marks {mean:+.1f}"
                )
    return "\n".join(lines)


def plot(rows, arms, out: Path, view: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    found = curves(rows, arms)
    fig, axes = plt.subplots(1, len(TASKS), figsize=(5.5 * len(TASKS), 4), squeeze=False)
    for ax, task in zip(axes[0], TASKS, strict=True):
        for arm in arms:
            curve = found[arm]
            x = [r["minutes"] for r in curve]
            y = [100 * r[task][view] for r in curve]
            e = [100 * se(r[task][view], r["clips"][task]) for r in curve]
            ax.errorbar(x, y, yerr=e, marker="o", ms=3, capsize=2, label=arm)
        ax.set_title(f"{task} (probe view: {view})")
        ax.set_xlabel("minutes of pretraining")
        ax.set_ylabel("probe accuracy (%), ± 1 SE")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = out / "objectives.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=20.0, help="pretraining per arm (default: 20)")
    ap.add_argument("--save-every-minutes", type=float, default=2.0, help="(default: 2)")
    ap.add_argument("--arms", default=",".join(ARMS), help="(default: all three)")
    ap.add_argument("--calibration-steps", type=int, default=12, help="(default: 12)")
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="stop this invocation after MIN minutes (default: no limit)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--budget", type=float, default=1.0,
                    help="scale the demo's data sizes, as `ssamba demo --budget` (default: 1; "
                    "smaller only to smoke-test this script)")  # fmt: skip
    args = ap.parse_args()
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = Budget(args.max_minutes)
    plan = DemoPlan() if args.budget == 1 else DemoPlan().scaled(args.budget)
    data = build_data(args.out, plan, progress=False)
    info = compute_stats(read_manifest(data["pretrain"]["manifest"]), progress=False)
    stats = (info["mean"], info["std"])
    complete = True
    for arm in arms:
        if budget.left() < MIN_SESSION_MINUTES:
            complete = False
            break
        cost = calibrate(arm, data, stats, args.out, plan, args.calibration_steps)
        save_every = max(1, round(args.save_every_minutes * 60 / cost))
        print(f"{arm}: {cost:.2f} s per step, a checkpoint every {save_every} steps", flush=True)
        complete &= run_arm(arm, data, stats, args.out, plan, args.minutes, save_every, budget)
    at = marks(args.minutes, args.save_every_minutes)
    rows, scored = score_points(arms, data, stats, args.out, plan, budget, at)
    complete &= scored
    texts = [report(rows, arms, args.out, args.minutes, args.save_every_minutes, v) for v in VIEWS]
    calibration = read_json(args.out / "calibration.json", {})
    settings = (
        f"{args.minutes:g} min per arm, checkpoints every ~{args.save_every_minutes:g} min, "
        f"threads {torch.get_num_threads()}, calibration {calibration}"
    )
    status = "" if complete else "\n\nINCOMPLETE: the --max-minutes ran out; run it again.\n"
    (args.out / "objectives.md").write_text(settings + "\n\n" + "\n\n".join(texts) + status + "\n")
    plot(rows, arms, args.out, "all")
    print((args.out / "objectives.md").read_text())


if __name__ == "__main__":
    main()

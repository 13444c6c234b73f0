"""Weight averaging of checkpoints (``ssamba average``): the reference's intended AudioSet trick.

The official recipe averages the weights of the epoch checkpoints from a given epoch on; its
script crashes, this does it: every tensor is the mean of the same tensor in each checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch


def average_checkpoints(folders: list[str | Path]):
    """A model whose weights are the mean of the given model folders' weights (same config)."""
    from ssamba.checkpoints import CheckpointError, load_model

    if not folders:
        raise ValueError("nothing to average: give at least one checkpoint")
    models = [load_model(f) for f in folders]
    first = models[0]
    for folder, model in zip(folders[1:], models[1:], strict=True):
        if model.config != first.config:
            raise CheckpointError(f"{folder}: its model config differs from {folders[0]}'s")
    states = [m.state_dict() for m in models]
    averaged = {
        k: (torch.stack([s[k].double() for s in states]).mean(0)).to(v.dtype)
        if v.is_floating_point()
        else v
        for k, v in states[0].items()
    }
    first.load_state_dict(averaged)
    return first


def run_folder_checkpoints(run: str | Path, first_step: int = 0) -> list[Path]:
    """A run's kept checkpoints (checkpoints/step_N) from ``first_step`` on, in step order."""
    found = sorted(Path(run, "checkpoints").glob("step_*"))
    return [p for p in found if int(p.name.split("_")[1]) >= first_step]


def add_average_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "average",
        help="average the weights of several checkpoints into one model",
        description="Average model folders, or a run's kept checkpoints (--run, --from-step).",
    )
    p.add_argument("checkpoints", nargs="*", help="model folders to average")
    p.add_argument("--run", help="a training output folder: average its kept checkpoints")
    p.add_argument("--from-step", type=int, default=0, help="with --run: first step to include")
    p.add_argument("--out", required=True, help="folder for the averaged model")
    p.set_defaults(func=run_average)


def run_average(args) -> int:
    import shutil

    folders = [Path(c) for c in args.checkpoints]
    if args.run:
        folders += run_folder_checkpoints(args.run, args.from_step)
    model = average_checkpoints(folders)
    model.save_pretrained(args.out)
    classes = folders[0] / "classes.json"
    if classes.exists():
        shutil.copy(classes, Path(args.out) / "classes.json")
    print(f"averaged {len(folders)} checkpoints -> {args.out}")
    return 0

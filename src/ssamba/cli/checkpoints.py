"""``ssamba convert`` and ``ssamba average`` (loading the model ``-c/--checkpoint`` names, which
every command shares, is in :mod:`ssamba.cli.common`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ssamba.cli.common import (
    add_checkpoint,
    add_command,
    add_out,
    add_overwrite,
    either,
    model_errors,
    non_negative_float,
    non_negative_int,
    positive_int,
    prepare_output,
)
from ssamba.constants import CLASSES_FILE, PATCH
from ssamba.errors import UsageError
from ssamba.fileio import atomic_write_bytes, staged_folder


def register(subparsers) -> None:
    _register_convert(subparsers)
    _register_average(subparsers)


# ---------------------------------------------------------------------------- ssamba convert
def _register_convert(subparsers) -> None:
    p = add_command(
        subparsers,
        "convert",
        help="convert an official .pth into a save_pretrained folder (and verify it)",
        description=(
            "Load an official SSAMBA/SSAST checkpoint, save it as config.json + "
            "model.safetensors, reload it and check that the weights and the outputs on a seeded "
            "random input are identical. Prints the model's configuration."
        ),
    )
    add_checkpoint(
        p,
        required=False,
        help="official state_dict file (.pth) to convert, or one inside a Hub repository: "
        "hf://ORG/NAME/FILE.pth (required)",
    )
    add_out(p, required=False, help="folder to write (required)")
    # the old spelling `ssamba convert OFFICIAL.pth OUT_DIR`, kept for one release
    p.add_argument("source", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("target", nargs="?", help=argparse.SUPPRESS)
    p.add_argument(
        "--fstride",
        type=positive_int,
        metavar="N",
        help="frequency patch stride (default: from the weights)",
    )
    p.add_argument(
        "--tstride",
        type=positive_int,
        metavar="N",
        help="time patch stride (default: from the weights)",
    )
    p.add_argument(
        "--input-tdim",
        type=positive_int,
        metavar="T",
        help="input frames; the positional embedding is adapted (default: from the weights)",
    )
    p.add_argument(
        "--num-classes",
        type=non_negative_int,
        metavar="C",
        help="classification head size (default: from the weights)",
    )
    # (the formatter takes a 0 default for "off": these helps state theirs)
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="seed of the check input (default: 0)",
    )
    p.add_argument(
        "--atol",
        type=non_negative_float,
        default=0.0,
        metavar="X",
        help="allowed max abs difference (default: 0, bit-identical)",
    )
    add_overwrite(p)
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    from ssamba.checkpoints import is_hub_file
    from ssamba.convert import OVERRIDES, convert_checkpoint

    source = either(args, "checkpoint", "source", "-c/--checkpoint")
    out = either(args, "out", "target", "-o/--out")
    if not is_hub_file(source) and not Path(source).is_file():
        raise UsageError(f"{source}: no such checkpoint file")
    if not args.overwrite:
        prepare_output(out, False, "output folder")
    if Path(out).resolve() == Path(source).resolve():
        raise UsageError("the output folder must differ from the source")
    overrides = {k: getattr(args, k) for k in OVERRIDES}
    # converted and checked in a temporary folder: the old output stays whole until then, and
    # none of its files (a classes.json) outlives it
    with model_errors(), staged_folder(out) as tmp:
        report = convert_checkpoint(source, tmp, seed=args.seed, atol=args.atol, **overrides)
    report["out_dir"] = str(out)
    print(config_summary(report))
    return 0


def config_summary(report: dict) -> str:
    """What ``ssamba convert`` prints: the converted model's configuration and the check."""
    cfg = report["config"]
    f_dim = (cfg["num_mel_bins"] - PATCH) // cfg["fstride"] + 1
    t_dim = (cfg["input_tdim"] - PATCH) // cfg["tstride"] + 1
    kind = "bidirectional Mamba" if cfg["arch"] == "ssamba" else "ViT"
    heads = [] if cfg["arch"] == "ssamba" else [f"{cfg['num_heads']} heads"]
    lines = [
        f"converted {report['source']} -> {report['out_dir']}",
        f"  model:     {cfg['arch']} ({kind}), width {cfg['embed_dim']}, depth {cfg['depth']}"
        + "".join(f", {h}" for h in heads)
        + f", {report['num_parameters']:,} parameters",
        f"  input:     {cfg['num_mel_bins']} mel bins x {cfg['input_tdim']} frames, stride "
        f"{cfg['fstride']}x{cfg['tstride']} -> {f_dim}x{t_dim} patches "
        f"(pretrained on {cfg['pretrain_fdim']}x{cfg['pretrain_tdim']})",
        f"  heads:     {'pretraining (mpc, mpg)' if cfg['pretrain_heads'] else 'no pretraining'}"
        f"; {cfg['num_classes'] or 'no'} classification classes (pool: {cfg['pool']})",
        f"  front end: fbank normalised with mean {cfg['norm_mean']}, std {cfg['norm_std']}",
        "  check:     state_dict bit-identical; max abs diff "
        + ", ".join(f"{k} {v:.3g}" for k, v in report["max_abs_diff"].items()),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- ssamba average
def _register_average(subparsers) -> None:
    p = add_command(
        subparsers,
        "average",
        help="average the weights of several checkpoints into one model",
        description=(
            "Average the weights of model folders (all of one config), or of a run's kept "
            "checkpoints (--run, --from-step), into one model folder; the first folder's "
            "classes.json goes with it."
        ),
    )
    p.add_argument("checkpoints", nargs="*", metavar="CKPT", help="model folders to average")
    add_checkpoint(
        p,
        required=False,
        action="append",
        help="a model folder to average (repeatable; the same as a CKPT argument; no default: "
        "give folders or --run)",
    )
    p.add_argument(
        "--run",
        metavar="DIR",
        help="a training output folder: average its kept checkpoints (default: none)",
    )
    p.add_argument(
        "--from-step",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="with --run: first step to include (default: 0, all)",
    )
    add_out(p, help="folder for the averaged model")
    add_overwrite(p)
    p.set_defaults(func=run_average)


def _run_checkpoints(run: str, from_step: int, find) -> list[Path]:
    """The kept checkpoints of ``run`` from ``from_step`` on; an error naming what is there
    when there are none."""
    if not Path(run).is_dir():
        raise UsageError(f"--run {run}: no such folder")
    everything = find(run, 0)
    if not everything:
        raise UsageError(f"--run {run}: no kept checkpoints (checkpoints/step_N) in it")
    found = find(run, from_step)
    if not found:
        steps = ", ".join(p.name.split("_")[1] for p in everything)
        raise UsageError(f"--from-step {from_step}: {run} has no checkpoint from that step on "
                         f"(steps: {steps})")  # fmt: skip
    return found


def run_average(args: argparse.Namespace) -> int:
    from ssamba.averaging import average_checkpoints, run_folder_checkpoints

    out = Path(args.out)
    if not args.overwrite:
        prepare_output(out, False, "output folder")
    folders = [Path(c) for c in (args.checkpoint or []) + args.checkpoints]
    if args.run:
        folders += _run_checkpoints(args.run, args.from_step, run_folder_checkpoints)
    elif args.from_step:
        raise UsageError("--from-step needs --run")
    if not folders:
        raise UsageError("nothing to average: give model folders (CKPT, -c) or --run DIR")
    model = average_checkpoints(folders)
    classes = folders[0] / CLASSES_FILE
    # written whole in a temporary folder, then swapped in: the old output (possibly one of the
    # inputs) stays intact until then, and none of its files (a classes.json) outlives it
    with staged_folder(out) as tmp:
        model.save_pretrained(tmp)
        if classes.is_file():
            atomic_write_bytes(tmp / CLASSES_FILE, classes.read_bytes())
    print(f"averaged {len(folders)} checkpoints -> {out}")
    return 0

"""``ssamba probe`` (a linear probe of frozen embeddings) and ``ssamba evaluate`` (a fine-tuned
model on a labelled manifest)."""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path

from ssamba.cli.common import (
    DEVICE_HELP,
    NORMALIZE_HELP,
    OVERLAP_HELP,
    TEST_HELP,
    TRAIN_HELP,
    VALID_HELP,
    add_bad_file_option,
    add_checkpoint,
    add_command,
    add_config,
    add_embedding_options,
    add_out,
    add_overwrite,
    add_progress,
    add_workers,
    bad_file_error,
    check_input_forms,
    check_window,
    default_device,
    either,
    load_checkpoint,
    non_negative_float,
    positive_int,
    prepare_output,
    target_frames,
)
from ssamba.constants import POOLINGS, PROBE_L2_GRID, PROBE_RESULTS_FILE
from ssamba.errors import AudioError, UsageError
from ssamba.fileio import (
    atomic_write_json,
    check_folder_target,
    make_temp_folder,
    replace_folder,
)

DEFAULT_L2 = PROBE_L2_GRID
RESULTS_FILE = PROBE_RESULTS_FILE
RUN_FILE = "run.json"  # the probe's settings, as --config reads them


def register(subparsers) -> None:
    _register_probe(subparsers)
    _register_evaluate(subparsers)


# ---------------------------------------------------------------------------- ssamba probe
def _register_probe(subparsers) -> None:
    p = add_command(
        subparsers,
        "probe",
        help="linear probe of frozen clip embeddings on a labelled dataset",
        description=(
            "Embed every file once (cached in DIR/cache), standardise with the training "
            "statistics, fit a linear classifier (softmax or sigmoid for multi-label) with the L2 "
            "weight chosen on the validation set, and report accuracy / mAP in "
            f"DIR/{RESULTS_FILE}. DIR/{RUN_FILE} records the settings: --config replays them."
        ),
    )
    add_checkpoint(p)
    add_split_options(p)
    add_out(p)
    add_embedding_options(p)
    p.add_argument(
        "--l2",
        type=non_negative_float,
        nargs="+",
        default=list(DEFAULT_L2),
        metavar="W",
        help="L2 weights to try",
    )
    p.add_argument("--max-iter", type=positive_int, default=200, metavar="N", help="L-BFGS steps")
    p.add_argument(
        "--pooling",
        choices=POOLINGS,
        default="mean",
        help="clip vector: mean of the patch tokens or kept per frequency band, +std: with the "
        "standard deviation over time",
    )
    add_bad_file_option(p)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing {RESULTS_FILE} (refused otherwise; the cache is kept)",
    )
    add_progress(p)
    add_config(p)
    p.set_defaults(func=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    from ssamba.data import DECODED_INPUTS
    from ssamba.embeddings import resolve_layers
    from ssamba.probe import linear_probe

    check_window(args)
    check_input_forms("probe", DECODED_INPUTS, train=args.train, valid=args.valid, test=args.test)
    out = check_folder_target(args.out, "probe's output folder")
    if not args.overwrite:
        prepare_output(out / RESULTS_FILE, False, "output")
    model = load_checkpoint(args.checkpoint, args.device)
    resolve_layers(model, args.layers)
    try:
        results = linear_probe(
            model,
            args.train,
            args.valid,
            args.test,
            layers=args.layers,
            window_seconds=args.window,
            hop_seconds=args.hop,
            batch_size=args.batch_size,
            cache_dir=out / "cache",
            l2_grid=args.l2,
            max_iter=args.max_iter,
            on_bad_file=args.on_bad_file,
            progress=not args.no_progress,
            pooling=args.pooling,
            allow_overlap=args.allow_overlap,
        )
    except AudioError as err:
        raise bad_file_error(err) from None
    results["checkpoint"] = args.checkpoint
    atomic_write_json(out / RESULTS_FILE, results)
    atomic_write_json(out / RUN_FILE, run_record(args, "probe"))
    _print_probe(results, out / RESULTS_FILE)
    return 0


def add_split_options(p: argparse.ArgumentParser) -> None:
    """``--train``, ``--valid``, ``--test`` and ``--allow-overlap``, as the training commands."""
    p.add_argument(
        "--train", required=True, metavar="MANIFEST", help=f"training manifest; {TRAIN_HELP}"
    )
    p.add_argument("--valid", metavar="MANIFEST", help=f"validation manifest ({VALID_HELP})")
    p.add_argument("--test", metavar="MANIFEST", help=f"test manifest ({TEST_HELP})")
    p.add_argument("--allow-overlap", action="store_true", help=OVERLAP_HELP)


def run_record(args: argparse.Namespace, command: str) -> dict:
    """The settings of a run, keyed as ``--config`` reads them (``overwrite`` left out, so a
    replay never replaces output unasked)."""
    skip = {"func", "config", "overwrite", "debug"}
    settings = {k: v for k, v in vars(args).items() if k not in skip and not k.startswith("_")}
    return {"command": command, **settings}


def _print_probe(results: dict, path: Path) -> None:
    metric = results["metric"]
    print(f"{results['task']} probe, {len(results['classes'])} classes, l2 = {results['l2']:g}")
    for name in ("train", "valid", "test"):
        if name in results:
            r = results[name]
            extra = f", {len(r['bad_files'])} bad files skipped" if r["bad_files"] else ""
            print(f"  {name:5s} {metric} {r[metric]:.4f} ({r['files']} files{extra})")
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- ssamba evaluate
def _register_evaluate(subparsers) -> None:
    p = add_command(
        subparsers,
        "evaluate",
        help="evaluate a fine-tuned model on a labeled manifest (accuracy, mAP, AUC, ...)",
        description=(
            "Run a fine-tuned checkpoint over a labeled manifest; print accuracy, mAP, mean AUC, "
            "d' and a per-class table; write metrics.json, per_class.csv, scores.npz and (single-"
            "label) confusion.csv/confusion.png. The model's class names come from --classes, "
            "else from classes.json in the checkpoint folder, else the manifest's classes when "
            "their number matches."
        ),
    )
    add_checkpoint(
        p,
        required=False,
        help="fine-tuned model: save_pretrained folder or official .pth (required)",
    )
    # -c is required (checked when it runs: the old positional spelling is still accepted)
    p.usage = "%(prog)s [-h] -c CKPT [options] MANIFEST"
    # the old spelling `ssamba evaluate CKPT MANIFEST`, kept for one release
    p.add_argument("legacy_checkpoint", nargs="?", help=argparse.SUPPRESS)
    p.add_argument(
        "manifest",
        metavar="MANIFEST",
        help="labeled manifest: SSAST JSON, CSV, or a folder per class",
    )
    p.add_argument(
        "--classes",
        metavar="FILE",
        help="the model's classes: classes.json, class_labels_indices.csv or the training "
        "manifest (default: classes.json beside the checkpoint)",
    )
    add_out(p, required=False, help="output folder (default: eval-<manifest name>)")
    p.add_argument(
        "--batch-size", type=positive_int, default=32, metavar="N", help="clips per batch"
    )
    p.add_argument(
        "--target-length",
        type=target_frames,
        metavar="FRAMES",
        help="frames per clip (10 ms each) (default: the checkpoint's)",
    )
    p.add_argument(
        "--fstride",
        type=positive_int,
        metavar="N",
        help="patch stride in frequency (default: the checkpoint's)",
    )
    p.add_argument(
        "--tstride",
        type=positive_int,
        metavar="N",
        help="patch stride in time (default: the checkpoint's)",
    )
    p.add_argument("--normalize", metavar="STATS", default="auto", help=NORMALIZE_HELP)
    p.add_argument("--device", help=DEVICE_HELP)
    add_workers(p, what="decode audio")
    add_bad_file_option(p)
    add_config(p)
    add_overwrite(p)
    add_progress(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from ssamba.data import check_input, read_class_list
    from ssamba.data.inputs import ONE_SET_INPUTS, SHARDS
    from ssamba.evaluation import MetricWarning, evaluate_model, find_class_list

    check_input(args.manifest, ONE_SET_INPUTS | {SHARDS}, "`ssamba evaluate`")
    checkpoint = either(args, "checkpoint", "legacy_checkpoint", "-c/--checkpoint")
    if args.legacy_checkpoint is not None:
        print("warning: `ssamba evaluate CKPT MANIFEST` is deprecated and goes in the next "
              "release; use `ssamba evaluate -c CKPT MANIFEST`", file=sys.stderr)  # fmt: skip
    out = Path(args.out) if args.out else Path(f"eval-{Path(args.manifest).stem}")
    check_folder_target(out, "evaluation output folder")
    if not args.overwrite:
        prepare_output(out, False, "evaluation output")
    overrides = {k: getattr(args, k) for k in ("fstride", "tstride") if getattr(args, k)}
    device = args.device or default_device()
    model = load_checkpoint(checkpoint, device, **overrides)
    class_file = args.classes or find_class_list(checkpoint)
    classes, display = read_class_list(class_file) if class_file is not None else (None, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricWarning)
        try:
            result = evaluate_model(
                model,
                args.manifest,
                classes=classes,
                batch_size=args.batch_size,
                target_length=args.target_length,
                normalize=None if args.normalize == "auto" else args.normalize,
                device=device,
                progress=not args.no_progress,
                num_workers=args.workers,
                on_bad_file=args.on_bad_file,
            )
        except AudioError as err:
            raise UsageError(
                f"cannot evaluate {err} (--on-bad-file skip leaves bad files out)"
            ) from None
    for w in caught:  # metric warnings are in the result's notes, printed below
        if not issubclass(w.category, MetricWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if display and not result.display_names:
        result.display_names = display
    if class_file is not None:
        result.notes.insert(0, f"classes from {class_file}")
    print(result.summary())
    _save_whole(result, out)
    print(f"wrote {out}/metrics.json, per_class.csv, scores.npz", end="")
    print(", confusion.csv, confusion.png" if not result.multilabel else "")
    return 0


def _save_whole(result, out: Path) -> None:
    """Save into a new folder beside ``out``, then put it in place: a reader never finds a mix
    of two evaluations."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_folder(out.parent, f".{out.name}.")
    try:
        result.save(tmp)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)

"""``ssamba dasl``, ``dasl-build``: dynamic audio scene labelling (docs: :mod:`ssamba.dasl`).

Options are built from :class:`~ssamba.configs.DaslConfig` and
:class:`~ssamba.configs.DaslBuildConfig` with :class:`ssamba.cli.common.ConfigOptions`, as the
training commands do.
"""

from __future__ import annotations

from pathlib import Path

from ssamba.cli.common import (
    TEST_HELP,
    TRAIN_HELP,
    VALID_HELP,
    ConfigOptions,
    add_command,
    add_out,
    add_overwrite,
    add_starting_weights,
    add_train_options,
    check_device,
    check_input_forms,
    check_model_conflict,
    config_values,
    given_model,
    is_main_process,
    non_negative_int,
    positive_float,
    positive_int,
    prepare_output,
    warn_if_random,
)
from ssamba.configs import MIXTURE_MODES, DaslBuildConfig, DaslConfig
from ssamba.constants import BAD_FILE_POLICIES


def register(subparsers) -> None:
    add_dasl_parser(subparsers)
    add_dasl_build_parser(subparsers)


# ---------------------------------------------------------------------------- dasl
def add_dasl_parser(subparsers) -> None:
    p = add_command(
        subparsers,
        "dasl",
        help="train per-second labelling of long recordings (dynamic audio scene labelling)",
        description=(
            "Train a model to label every chunk (1 s by default) of long recordings: the patch "
            "tokens of each chunk's time columns are averaged and classified. Manifests: "
            "path,labels with one ';'-separated label per second (see `ssamba dasl-build`). "
            "Defaults follow the SSAMBA repo's urban8k script. `--config RUN/run.json` replays "
            "a run."
        ),
    )
    options = ConfigOptions(DaslConfig)
    g = p.add_argument_group("model and data")
    add_starting_weights(g, options)
    add = options.add
    add(g, "train", f"DASL manifest (path,labels); {TRAIN_HELP}", required=True,
        metavar="MANIFEST")  # fmt: skip
    add(g, "valid", f"DASL manifest that selects the best epoch ({VALID_HELP}; else none: "
        "final/ is used)", metavar="MANIFEST")  # fmt: skip
    add(g, "test", f"DASL manifest the chosen model is evaluated on ({TEST_HELP})",
        metavar="MANIFEST")  # fmt: skip
    add(g, "chunk_seconds", "length of a labelled chunk", type=positive_float, metavar="S")
    add(g, "seconds", "recording length (default: the longest in --train)", type=positive_int,
        metavar="S")  # fmt: skip
    add(g, "normalize", "fbank normalisation: a preset, 'MEAN,STD', a stats JSON or none",
        metavar="STATS")  # fmt: skip
    add(g, "fstride", "patch stride in frequency", type=positive_int, metavar="N")
    add(g, "tstride", "patch stride in time", type=positive_int, metavar="N")
    add(g, "freqm", "SpecAugment: largest frequency mask (mel bins)", type=non_negative_int)
    add(g, "timem", "SpecAugment: largest time mask (frames)", type=non_negative_int)
    g = p.add_argument_group("learning rate")
    add(g, "head_lr_mult", "the head's learning rate over the body's", type=positive_float)
    add(g, "lr_decay", "learning rate factor at each decay", type=positive_float)
    add(g, "lr_decay_start", "epoch of the first decay", type=non_negative_int)
    add(g, "lr_decay_every", "epochs between decays", type=positive_int)
    add_train_options(p, options)
    p.set_defaults(func=run_dasl)


def run_dasl(args) -> int:
    from ssamba.dasl import train_dasl
    from ssamba.data import DECODED_INPUTS
    from ssamba.training import configure_logging
    from ssamba.training.run_folder import check_new_run

    check_device(args.device)
    cfg = DaslConfig(**config_values(args, DaslConfig))
    check_input_forms("dasl", DECODED_INPUTS, train=cfg.train, valid=cfg.valid, test=cfg.test)
    check_model_conflict(given_model(args), cfg.checkpoint)
    check_new_run(cfg.out, cfg.resume, cfg.overwrite)  # before the model is loaded
    configure_logging(is_main_process())
    with warn_if_random(cfg.checkpoint, cfg.model, "DASL training"):
        summary = train_dasl(cfg, device=args.device)
    line = f"DASL training done: {summary['steps']} steps"
    if summary.get("best_metric") is not None:
        line += f", best validation per-chunk acc {summary['best_metric']:.4f}"
    if "test" in summary:
        t = summary["test"]
        line += f"; test acc {t['acc']:.4f} (clip mean {t['clip_acc']:.4f})"
    print(line)
    return 0


# ---------------------------------------------------------------------------- dasl-build
def add_dasl_build_parser(subparsers) -> None:
    p = add_command(
        subparsers,
        "dasl-build",
        help="concatenate labelled clips into long recordings with per-second labels",
        description=(
            "Build DASL data: concatenate clips of a single-label manifest (e.g. a fold of "
            "`ssamba prepare urbansound8k`, or a folder per class) into long 16 kHz WAVs and write "
            "NAME.csv (path,labels: one ';'-separated label per second), NAME.sources.json and "
            "class_labels_indices.csv into --out. Several NAMEs (train, valid, test) may share "
            "one folder and its class list."
        ),
    )
    options = ConfigOptions(DaslBuildConfig)
    p.add_argument("manifest", help="single-label manifest (CSV, SSAST JSON, folder per class)")
    add_out(p)
    p.add_argument(
        "-n", "--recordings", type=positive_int, required=True, help="how many recordings"
    )
    options.add(p, "seconds", "length of each recording", type=positive_int)
    options.add(
        p,
        "mode",
        "whole: clips cut to whole seconds, back to back (reference); crop: a random 1-s crop of "
        "a random clip every second",
        choices=MIXTURE_MODES,
    )
    options.add(p, "name", "manifest and audio folder name")
    options.add(p, "seed", "random seed (clip order, crops)", type=non_negative_int)
    options.add(p, "on_bad_file", "an unreadable audio file stops the build, or is skipped",
                choices=BAD_FILE_POLICIES)  # fmt: skip
    add_overwrite(p)
    p.set_defaults(func=run_dasl_build)


def run_dasl_build(args) -> int:
    from ssamba.dasl import build_dasl_mixtures
    from ssamba.data import ONE_SET_INPUTS, check_input

    check_input(args.manifest, ONE_SET_INPUTS, "`ssamba dasl-build`")
    DaslBuildConfig(args.seconds, args.mode, args.name, args.seed, args.on_bad_file)  # checks
    out = Path(args.out)
    what = f"DASL data {args.name!r}"
    files = (out / f"{args.name}.csv", out / f"{args.name}.sources.json")
    if not args.overwrite:  # every refusal before anything is made or removed
        for path in files:
            prepare_output(path, False, what)
    prepare_output(out / args.name, args.overwrite, what, folder=True)
    for path in files:
        prepare_output(path, args.overwrite, what)
    result = build_dasl_mixtures(
        args.manifest,
        out,
        args.recordings,
        args.seconds,
        args.seed,
        mode=args.mode,
        name=args.name,
        on_bad_file=args.on_bad_file,
    )
    print(format_build(result))
    return 0


def format_build(result) -> str:
    """What ``ssamba dasl-build`` prints: recordings, classes and seconds per class."""
    total = sum(result.label_counts.values())
    lines = [
        f"{result.recordings} recordings of {result.seconds} s -> {result.manifest}",
        f"classes: {len(result.classes)}; labelled seconds: {total}",
    ]
    width = max(len(c) for c in result.classes)
    for c in result.classes:
        lines.append(f"  {c:<{width}}  {result.label_counts.get(c, 0):>7} s")
    return "\n".join(lines)

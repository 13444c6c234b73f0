"""``ssamba pretrain``, ``finetune``, ``crossval``: the training commands.

Their options are built from the config dataclasses of :mod:`ssamba.configs`: an option's
destination is the field's name and its default the field's default. So the defaults have one
home, ``--help`` shows them without loading torch, and ``--config RUN/run.json`` replays a run
(run.json records the fields). The library is imported when a command runs.
"""

from __future__ import annotations

import argparse

from ssamba.cli.common import (
    NORMALIZE_HELP,
    TEST_HELP,
    TRAIN_HELP,
    VALID_HELP,
    ConfigOptions,
    add_checkpoint,
    add_command,
    add_model_options,
    add_starting_weights,
    add_train_options,
    check_device,
    check_input_forms,
    check_model_conflict,
    config_values,
    fraction,
    given_model,
    is_main_process,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    target_frames,
    unit_fraction,
    warn_if_random,
)
from ssamba.configs import (
    FRESH_LAYOUT,
    HEAD_INITS,
    HIDE_MASKED,
    LOSSES,
    LR_SCHEDULES,
    MASK_MODES,
    OBJECTIVES,
    SELECTION_METRICS,
    FinetuneConfig,
    PretrainConfig,
)
from ssamba.constants import BAD_FILE_POLICIES, POOLINGS
from ssamba.models.config import POOLS
from ssamba.recipes import FINETUNE_FIELDS, list_recipes, load_recipe
from ssamba.recipes.pretraining import (
    PRETRAIN_FIELDS,
    list_pretrain_recipes,
    load_pretrain_recipe,
)

# What a fine-tuning --recipe may set: its "finetune" table and its weight-averaging window.
RECIPE_SETTABLE = (*FINETUNE_FIELDS, "average_epochs")


def register(subparsers) -> None:
    add_pretrain_parser(subparsers)
    add_finetune_parser(subparsers)
    add_crossval_parser(subparsers)


# ---------------------------------------------------------------------------- shared options


def add_ablation_options(g) -> None:
    """The paper's ablations of the SSAMBA block, as model config overrides (they win over
    --model-overrides)."""
    g.add_argument(
        "--unidirectional",
        action="store_true",
        help="scan forward only, not both ways (ablation; default: off: bidirectional, as the "
        "released models)",
    )
    g.add_argument(
        "--norm",
        choices=("layernorm", "rmsnorm"),
        help="the blocks' normalisation (ablation; default: the preset's, layernorm)",
    )
    g.add_argument(
        "--residual-fp32",
        action=argparse.BooleanOptionalAction,
        help="keep the residual stream in fp32 under bf16/fp16 (ablation; default: the "
        "preset's, off)",
    )


# ---------------------------------------------------------------------------- pretrain
def add_pretrain_parser(subparsers) -> None:
    p = add_command(
        subparsers,
        "pretrain",
        help="self-supervised pretraining (masked spectrogram patch modelling)",
        description=(
            "Pretrain SSAMBA or SSAST on unlabeled audio with the joint discriminative (InfoNCE) "
            "and generative (MSE) masked-patch objective (the paper's, the default), or with an "
            "EMA teacher (--objective teacher; docs/pretraining.md). Runs under "
            "torchrun for several processes/nodes (DDP). Settings: defaults < --recipe (an "
            "official run's settings) < --config file < options given. `--config RUN/run.json` "
            "replays a run."
        ),
    )
    p.add_argument(
        "--recipe",
        help="a pretraining recipe: an official run (ssamba_SIZE_M) or ours for the teacher "
        "objective (ssamba_SIZE_teacher): " + ", ".join(list_pretrain_recipes()) + " (default: "
        "none)",
    )
    options = ConfigOptions(PretrainConfig, from_recipe=PRETRAIN_FIELDS)
    g = p.add_argument_group("model and data")
    add_model_options(g, options, drop_path=True)
    add_ablation_options(g)
    add_checkpoint(
        g,
        required=False,
        help="saved weights to continue pretraining from: save_pretrained folder or official "
        ".pth (default: none: a fresh --model)",
    )
    options.add(g, "train", f"audio folder, list or manifest; {TRAIN_HELP}", required=True,
                metavar="MANIFEST")  # fmt: skip
    options.add(g, "valid", "held-out audio for masked-patch accuracy (teacher: the "
                f"objective's loss) ({VALID_HELP}; else none: no validation, no best/)",
                metavar="MANIFEST")  # fmt: skip
    options.add(g, "target_length", "frames per clip (10 ms each)", type=target_frames,
                metavar="FRAMES")  # fmt: skip
    options.add(g, "normalize", NORMALIZE_HELP, metavar="STATS")
    options.add(g, "mask_patch", "masked patches per clip; none: 400 of 512, scaled to "
                "--target-length", type=positive_int, metavar="N")  # fmt: skip
    options.add(g, "mask_mode", "cluster masks (SSAST), random patches or whole frames",
                choices=MASK_MODES)  # fmt: skip
    options.add(g, "objective", "joint: InfoNCE + weighted MSE (the paper's); mpc or mpg: one of "
                "them; teacher: an EMA teacher's layer outputs as targets (ours, see below)",
                choices=OBJECTIVES)  # fmt: skip
    options.add(g, "mpg_weight", "weight of the generative (MSE) loss", type=non_negative_float)
    options.add(g, "on_bad_file", "an unreadable audio file stops the run, or is skipped",
                choices=BAD_FILE_POLICIES)  # fmt: skip
    add_teacher_options(p, options)
    add_probe_options(p, options)
    add_train_options(p, options)
    p.set_defaults(func=run_pretrain)


def add_teacher_options(p, options: ConfigOptions) -> None:
    """The teacher objective's settings (docs/pretraining.md, "The teacher objective")."""
    g = p.add_argument_group(
        "teacher objective (--objective teacher; --mask-patch and --mask-mode do not apply)",
        "An EMA teacher encodes the whole clip; a light decoder after the student predicts\n"
        "the mean of the teacher's top layer outputs (each instance-normalised) at the\n"
        "hidden patches of several masked views per clip. The released model is the student.",
    )
    add = options.add
    add(g, "mask_ratio", "fraction of the patches hidden from the student in each view (inverse "
        "block masking)", type=fraction, metavar="F")  # fmt: skip
    add(g, "mask_block", "side, in patches, of the visible squares the masks are built of",
        type=positive_int, metavar="N")  # fmt: skip
    add(g, "masks_per_clip", "masked views per clip, sharing one teacher pass",
        type=positive_int, metavar="M")  # fmt: skip
    add(g, "hide_masked", "drop: hidden patches leave the student's sequence (MAE-style); "
        "token: a learned mask token takes their place", choices=HIDE_MASKED)  # fmt: skip
    add(g, "target_layers", "the teacher's top K layer outputs averaged into the targets (all "
        "of them when it has fewer)", type=positive_int, metavar="K")  # fmt: skip
    add(g, "utterance_weight", "weight of the utterance term (the student's class token "
        "against the teacher's clip-level target)", type=non_negative_float)  # fmt: skip
    add(g, "decoder_layers", "convolution layers of the decoder", type=positive_int,
        metavar="N")  # fmt: skip
    add(g, "ema_decay", "the teacher's EMA decay at the first update", type=fraction,
        metavar="D")  # fmt: skip
    add(g, "ema_end_decay", "the decay reached after --ema-anneal-steps (linear rise)",
        type=fraction, metavar="D")  # fmt: skip
    add(g, "ema_anneal_steps", "updates over which the decay rises", type=positive_int,
        metavar="N")  # fmt: skip


def add_probe_options(p, options: ConfigOptions) -> None:
    """The online probe of ``ssamba pretrain`` (docs/pretraining.md, "Online probe")."""
    g = p.add_argument_group(
        "online probe",
        "`ssamba probe`'s linear probe (and a 20-nearest-neighbour vote) of the current\n"
        "weights on labelled sets, logged as probe/NAME/score and probe/NAME/knn. TEST\n"
        "chooses the L2 weight: pass a validation split, not your final test set.",
    )
    options.add(g, "probe", "a labelled set to probe, repeatable: TRAIN,TEST manifests, or TRAIN "
                "alone (its valid rows as TEST when it has a split column, else 20%% of it, "
                "stratified, held out as TEST); PATH:SPLIT takes one split; NAME= names it "
                "(default: none; a set's name: TRAIN's parent folder)", action="append",
                metavar="[NAME=]TRAIN[,TEST]")  # fmt: skip
    options.add(g, "probe_every", "probe every N steps; 0: at every evaluation (--eval-every); "
                "always at step 0 and at the end", type=non_negative_int,
                metavar="N")  # fmt: skip
    options.add(g, "probe_pooling", "clip vector, as `ssamba probe --pooling`",
                choices=POOLINGS)  # fmt: skip
    options.add(g, "probe_layers", "layer indices to concatenate, as `ssamba probe --layers`",
                type=int, nargs="+", metavar="I")  # fmt: skip
    options.add(g, "probe_max_files", "files per probe split at most: a larger split is probed "
                "on a fixed subset drawn with --seed", type=positive_int,
                metavar="N")  # fmt: skip
    options.add(g, "probe_batch_size", "clips embedded together by the probe (more: faster, "
                "more memory)", type=positive_int, metavar="N")  # fmt: skip
    options.add(g, "keep_best_probe", "keep the model of the best mean probe score in "
                "OUT/best_probe/ (with probe.json: its step and scores)",
                action="store_true")  # fmt: skip


def run_pretrain(args) -> int:
    from ssamba.data import STREAMED_INPUTS
    from ssamba.pretrain import pretrain
    from ssamba.training import configure_logging
    from ssamba.training.run_folder import check_new_run

    check_device(args.device)
    cfg = pretrain_config(args)
    check_input_forms("pretrain", STREAMED_INPUTS, train=cfg.train, valid=cfg.valid)
    check_model_conflict(given_model(args), cfg.checkpoint)
    check_new_run(cfg.out, cfg.resume, cfg.overwrite)  # before the model is loaded
    configure_logging(is_main_process())
    summary = pretrain(cfg, device=args.device)
    print(
        f"pretraining done: {summary['steps']} steps in {summary['seconds']} s -> {cfg.out}/final"
    )
    if cfg.probe and is_main_process():
        print(
            f"online probe: {summary['probe_seconds']} s, "
            f"{100 * summary['probe_fraction']:.1f}% of the run's wall time; best probe/score "
            f"{summary['best_probe_score']:.4f} at step {summary['best_probe_step']}"
        )
    return 0


def pretrain_config(args) -> PretrainConfig:
    """The settings of ``ssamba pretrain``: defaults < --recipe < --config file < options."""
    recipe = getattr(args, "recipe", None)
    values = dict(load_pretrain_recipe(recipe)["pretrain"]) if recipe else {}
    values.update(config_values(args, PretrainConfig))
    return PretrainConfig(**values)


# ---------------------------------------------------------------------------- finetune
def add_finetune_parser(subparsers) -> None:
    p = add_command(
        subparsers,
        "finetune",
        help="fine-tune a (pretrained or random) model on a labelled task",
        description=(
            "Fine-tune SSAMBA or SSAST on labelled audio. Settings: defaults < --recipe (a "
            "task's reference settings, see `ssamba prepare`) < --config file < options given. "
            "`--config RUN/run.json` replays a run."
        ),
    )
    p.add_argument(
        "--recipe", help="task recipe: " + ", ".join(list_recipes()) + " (default: none)"
    )
    g = p.add_argument_group("data")
    options = ConfigOptions(FinetuneConfig, from_recipe=RECIPE_SETTABLE)
    options.add(g, "train", f"labelled manifest (CSV, SSAST JSON or a folder per class); "
                f"{TRAIN_HELP}", required=True, metavar="MANIFEST")  # fmt: skip
    options.add(g, "valid", f"manifest that selects the best epoch ({VALID_HELP}; else none: "
                "final/ is used)", metavar="MANIFEST")  # fmt: skip
    options.add(g, "test", f"manifest the chosen model is evaluated on ({TEST_HELP})",
                metavar="MANIFEST")  # fmt: skip
    add_finetune_options(p, options)
    p.set_defaults(func=run_finetune)


def add_finetune_options(p, options: ConfigOptions) -> None:
    """The model, augmentation and optimisation options (shared with ``ssamba crossval``)."""
    g = p.add_argument_group("model")
    add_starting_weights(g, options)
    add = options.add
    inherited = "the checkpoint's; {} without one"
    add(g, "target_length", "frames per clip (10 ms each)", type=target_frames, metavar="FRAMES",
        shown=inherited.format(FRESH_LAYOUT["target_length"]))  # fmt: skip
    add(g, "normalize", NORMALIZE_HELP, metavar="STATS")
    add(g, "fstride", "patch stride in frequency", type=positive_int, metavar="N",
        shown=inherited.format(FRESH_LAYOUT["fstride"]))  # fmt: skip
    add(g, "tstride", "patch stride in time", type=positive_int, metavar="N",
        shown=inherited.format(FRESH_LAYOUT["tstride"]))  # fmt: skip
    add(g, "pool", "head input: mean patch token, class token(s), per-band means (and their "
        "standard deviations over time)", choices=POOLS)  # fmt: skip
    add(g, "head_init", "the head before the first step: random, or the linear probe of the "
        "frozen features it reads, fit on --train with L2 chosen on --valid (LP-FT)",
        choices=HEAD_INITS)  # fmt: skip
    g = p.add_argument_group("augmentation and loss")
    add(g, "freqm", "SpecAugment: largest frequency mask (mel bins)", type=non_negative_int)
    add(g, "timem", "SpecAugment: largest time mask (frames)", type=non_negative_int)
    add(g, "mixup", "probability of mixing two clips (mixup)", type=fraction)
    add(g, "noise", "add noise and shift in time", action=argparse.BooleanOptionalAction)
    add(g, "loss", "ce: single-label; bce: multi-label", choices=LOSSES)
    add(g, "metric", "the validation metric that selects the best epoch (loss: the --loss on the "
        "validation set, lower is better)", choices=SELECTION_METRICS)  # fmt: skip
    add(g, "balanced", "class-balanced sampling", action=argparse.BooleanOptionalAction)
    add(g, "on_bad_file", "an unreadable audio file stops the run, or is skipped",
        choices=BAD_FILE_POLICIES)  # fmt: skip
    g = p.add_argument_group("learning rate")
    add(g, "head_lr_mult", "the head's learning rate over the body's", type=positive_float)
    add(g, "layer_decay", "layer-wise decay: each layer's learning rate is F times the one "
        "above it (1: off; the embeddings are the bottom layer)", type=unit_fraction,
        metavar="F")  # fmt: skip
    add(g, "freeze_encoder_steps", "train only the head for the first N steps",
        type=non_negative_int, metavar="N")  # fmt: skip
    add(g, "lr_decay", "learning rate factor per epoch from --lr-decay-start on",
        type=positive_float)  # fmt: skip
    add(g, "lr_decay_start", "first epoch of the decay", type=non_negative_int)
    add(g, "lr_schedule", "step_decay: x --lr-decay after every epoch from --lr-decay-start on; "
        "milestones: x --lr-decay after each of --lr-milestones (MultiStepLR)",
        choices=LR_SCHEDULES)  # fmt: skip
    add(g, "lr_milestones", "epochs (1-based) after which --lr-schedule milestones decays",
        type=positive_int, nargs="+", metavar="EPOCH")  # fmt: skip
    add(g, "average_epochs", "average the checkpoints of epochs FIRST..LAST into averaged/ at the "
        "end (and test it), as the official AudioSet script (default: none; the audioset20k "
        "recipe: 12 40)", type=positive_int, nargs=2,
        metavar=("FIRST", "LAST"))  # fmt: skip
    add_train_options(p, options)


def finetune_config(args, recipe: str | None = None, **fixed) -> FinetuneConfig:
    """The settings of ``ssamba finetune``: defaults < recipe < --config file < options given
    (an option given or set by the file is in ``args``), then ``fixed``."""
    values = dict(load_recipe(recipe)["finetune"]) if recipe else {}
    if recipe and "average" in load_recipe(recipe):  # the recipe's weight-averaging window
        window = load_recipe(recipe)["average"]
        values["average_epochs"] = [window["first_epoch"], window["last_epoch"]]
    values.update(config_values(args, FinetuneConfig))
    values.update(fixed)
    return FinetuneConfig(**values)


def run_finetune(args) -> int:
    from ssamba.data import STREAMED_INPUTS
    from ssamba.finetune import finetune
    from ssamba.training import configure_logging
    from ssamba.training.run_folder import check_new_run

    check_device(args.device)
    cfg = finetune_config(args, args.recipe)
    check_input_forms("finetune", STREAMED_INPUTS, train=cfg.train, valid=cfg.valid, test=cfg.test)
    check_model_conflict(given_model(args), cfg.checkpoint)
    check_new_run(cfg.out, cfg.resume, cfg.overwrite)  # before the model is loaded
    configure_logging(is_main_process())
    with warn_if_random(cfg.checkpoint, cfg.model, "fine-tuning"):
        summary = finetune(cfg, device=args.device)
    best = summary.get("best_metric")
    line = f"fine-tuning done: {summary['steps']} steps"
    if best is not None:
        line += f", best validation {cfg.metric} {best:.4f} at step {summary['best_step']}"
    if "test" in summary:
        line += f"; test {cfg.metric} {summary['test'].get(cfg.metric, float('nan')):.4f}"
    print(line)
    return 0


# ---------------------------------------------------------------------------- crossval
def fold_list(text: str) -> list[int]:
    """``"1,3"`` or ``"1-3,5"`` -> [1, 3] / [1, 2, 3, 5] (an argparse type)."""
    folds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                folds.extend(range(a, b + 1))
            else:
                folds.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,2 or 1-3") from None
    return sorted(set(folds))


def add_crossval_parser(subparsers) -> None:
    p = add_command(
        subparsers,
        "crossval",
        help="k-fold cross-validation of fine-tuning on a prepared dataset",
        description=(
            "Fine-tune on each fold of a dataset prepared by `ssamba prepare` (fold{k}_train, "
            "evaluated on fold{k}_eval) into OUT/fold{k}, then report each fold's accuracy after "
            "the last epoch and their mean (the recipes' protocol) in OUT/crossval.json. "
            "Finished folds are skipped on a rerun. Options as `ssamba finetune`; "
            "`--config OUT/crossval_config.json` replays a cross-validation."
        ),
    )
    p.add_argument("--prepared", required=True, metavar="PREPARED",
                   help="folder written by `ssamba prepare`, or a manifest whose split column "
                   "names the folds fold1 .. foldK (PREPARED/all.csv); PATH:foldK: that fold "
                   "only")  # fmt: skip
    p.add_argument(
        "--folds", type=fold_list, help="subset of folds, e.g. 1,2 or 1-3 (default: all)"
    )
    p.add_argument("--recipe", help="task recipe (default: the task in PREPARED/prepare.json)")
    add_finetune_options(p, ConfigOptions(FinetuneConfig, from_recipe=RECIPE_SETTABLE))
    p.set_defaults(func=run_crossval)


def run_crossval(args) -> int:
    from ssamba.crossval import crossval, recipe_from_prepared
    from ssamba.training import configure_logging

    check_device(args.device)
    recipe = args.recipe or recipe_from_prepared(args.prepared)
    template = finetune_config(args, recipe, train="", valid=None, test=None)
    check_model_conflict(given_model(args), template.checkpoint)
    configure_logging(is_main_process())
    summary = crossval(
        template, args.prepared, args.out, args.folds, recipe=recipe, device=args.device
    )
    if is_main_process():
        print(format_table(summary))
    return 0


def format_table(summary: dict) -> str:
    """The per-fold table (percent) with the mean, as ``ssamba crossval`` prints it."""
    metric = summary["metric"]
    name = summary.get("recipe") or "cross-validation"
    lines = [
        f"{name}: {metric} on each evaluation fold after the last epoch (percent)",
        f"{'fold':>6}  {'last':>7}  {'best*':>7}  {'epochs':>6}",
    ]
    for k, r in summary["folds"].items():
        lines.append(
            f"{'fold' + k:>6}  {100 * r['last']:7.2f}  {100 * r['best']:7.2f}  {r['epochs']:>6}"
        )
    if summary["mean"] is not None:
        lines.append(
            f"{'mean':>6}  {100 * summary['mean']:7.2f}  {100 * summary['best_mean']:7.2f}"
            f"  (std {100 * summary['std']:.2f})"
        )
    lines.append("* best epoch, chosen on the evaluation fold itself: optimistic, not the protocol")
    if not summary["complete"]:
        lines.append(
            f"partial: {summary['num_folds']} of {summary['available_folds']} folds finished "
            "(run the others with --folds)"
        )
    if summary["protocol_folds"] != summary["available_folds"]:
        lines.append(
            f"note: the {name} protocol has {summary['protocol_folds']} folds; this dataset has "
            f"{summary['available_folds']}"
        )
    expected = summary.get("expected") or {}
    known = {k: v for k, v in expected.items() if k.startswith("ss") and v is not None}
    if known:
        shown = ", ".join(f"{k} {v}" for k, v in known.items())
        lines.append(f"published: {shown} ({expected.get('unit', '')})")
    return "\n".join(lines)

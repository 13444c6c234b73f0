"""``ssamba stats``, ``check-data``, ``prepare`` and ``data``: everything about data sets.

- ``stats MANIFEST [-o stats.json]``: the fbank mean/std of a data set (for ``--normalize``);
- ``check-data MANIFEST [-o report.json]``: decode every file and list the problems (exit 1);
- ``prepare TASK SOURCE_DIR -o DIR``: a downloaded data set (official layout) -> manifests;
- ``data BUILDER [-o DIR]``: build the demo's data sets from real audio found offline;
- ``segment INPUT... -o DIR``: cut long recordings into clips with a manifest;
- ``shard MANIFEST -o DIR``: pack a data set into WebDataset tar shards for streaming.

The library does the work (:mod:`ssamba.data`, :mod:`ssamba.recipes.prepare`,
:mod:`ssamba.demo.builders`); it is imported inside each command so that ``--help`` loads no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssamba.cli.common import (
    add_command,
    add_out,
    add_overwrite,
    add_progress,
    add_workers,
    check_cache_folder,
    deprecated_alias,
    hidden_alias,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    prepare_output,
    target_frames,
)
from ssamba.constants import BAD_FILE_POLICIES, SAMPLE_RATE
from ssamba.errors import AudioError, UsageError
from ssamba.fileio import atomic_write_json
from ssamba.recipes import list_recipes

MANIFEST_HELP = "SSAST JSON, CSV, list of paths (PATH:SPLIT: one split), or a folder of audio"


def register(subparsers) -> None:
    _add_stats(subparsers)
    _add_check_data(subparsers)
    _add_prepare(subparsers)
    _add_data(subparsers)
    _add_segment(subparsers)
    _add_shard(subparsers)


def _add_decoding(p: argparse.ArgumentParser) -> None:
    """Options of the commands that decode every file of a manifest."""
    p.add_argument(
        "--sample-rate", type=positive_int, default=SAMPLE_RATE, metavar="HZ", help="decode at HZ"
    )
    add_workers(p, what="decode")
    add_overwrite(p)
    add_progress(p)


def _add_json_out(p: argparse.ArgumentParser, help: str) -> None:
    # -o/--out as every command spells its output, here a JSON file rather than a folder
    p.add_argument("-o", "--out", metavar="JSON", help=help)


def _refuse_existing(path: str | None, overwrite: bool, what: str) -> None:
    """Stop before the work when it would end by replacing ``path`` without ``--overwrite``;
    the file itself is replaced atomically at the end (so a failed run keeps the old one)."""
    if path and not overwrite:
        prepare_output(path, False, what)


# ---------------------------------------------------------------------------- ssamba stats
def _add_stats(subparsers) -> None:
    p = add_command(
        subparsers,
        "stats",
        help="compute the fbank mean/std of a dataset (for --normalize)",
        description=(
            "Compute the mean and standard deviation of the unnormalised log-mel fbank over all "
            "values of a dataset (exact, streaming). The JSON it writes can be passed wherever "
            "a normalisation is expected (e.g. --normalize stats.json)."
        ),
    )
    p.add_argument("manifest", help=MANIFEST_HELP)
    _add_json_out(p, "write the stats to this JSON file (default: print them only)")
    p.add_argument(
        "--target-length",
        type=target_frames,
        metavar="FRAMES",
        help="pad/cut every fbank to FRAMES frames first, as training does (default: no padding)",
    )
    p.add_argument(
        "--on-bad-file",
        choices=BAD_FILE_POLICIES,
        default="error",
        help="stop at an unreadable file, or leave it out and count it",
    )
    _add_decoding(p)
    p.set_defaults(func=run_stats)


def run_stats(args: argparse.Namespace) -> int:
    from ssamba.data import DECODED_INPUTS, check_input, compute_stats, read_manifest

    check_input(args.manifest, DECODED_INPUTS, "`ssamba stats`")
    _refuse_existing(args.out, args.overwrite, "stats file")
    manifest = read_manifest(args.manifest, ignore_labels=True)
    try:
        stats = compute_stats(
            manifest,
            target_length=args.target_length,
            progress=not args.no_progress,
            on_bad_file=args.on_bad_file,
            sample_rate=args.sample_rate,
            num_workers=args.workers,
        )
    except AudioError as e:
        raise UsageError(
            f"{e} (`ssamba check-data` lists every bad file; --on-bad-file skip leaves them out)"
        ) from None
    print(f"mean: {stats['mean']:.7f}")
    print(f"std:  {stats['std']:.7f}")
    skipped = f", {stats['skipped']} skipped" if stats["skipped"] else ""
    print(f"({stats['files']} files, {stats['frames']} frames{skipped})")
    if args.out:
        keys = ("mean", "std", "files", "frames", "skipped")
        saved = {k: stats[k] for k in keys} | {
            "target_length": args.target_length,
            "manifest": str(Path(args.manifest).resolve()),
        }
        print(f"wrote {atomic_write_json(args.out, saved)}")
    return 0


# ---------------------------------------------------------------------------- ssamba check-data
def _add_check_data(subparsers) -> None:
    p = add_command(
        subparsers,
        "check-data",
        help="decode every file of a manifest and report problems",
        description=(
            "Check every entry of a manifest: the file exists and decodes, is not empty, has no "
            "NaN/inf, holds the data its header declares, is at least one patch long, is listed "
            "once, and its labels are known. Files that will be resampled are "
            "listed (not a problem). Exits 1 when problems are found, 0 otherwise."
        ),
    )
    p.add_argument("manifest", help=MANIFEST_HELP)
    _add_json_out(p, "also write the report to this JSON file (default: print it only)")
    hidden_alias(p, "--json", dest="out")
    p.add_argument(
        "--min-seconds",
        type=positive_float,
        metavar="S",
        help="files shorter than S seconds are problems (default: shorter than one 16-frame "
        "patch, 0.175 s)",
    )
    p.add_argument(
        "--classes",
        metavar="FILE",
        help="check the labels against this class list: class_labels_indices.csv, classes.json "
        "or a training manifest (default: the manifest's own labels)",
    )
    _add_decoding(p)
    p.set_defaults(func=run_check_data)


def run_check_data(args: argparse.Namespace) -> int:
    from ssamba.data import DECODED_INPUTS, check_data, check_input, read_manifest

    check_input(args.manifest, DECODED_INPUTS, "`ssamba check-data`")
    _refuse_existing(args.out, args.overwrite, "report")
    manifest = read_manifest(args.manifest, classes=args.classes)
    report = check_data(
        manifest,
        sample_rate=args.sample_rate,
        min_seconds=args.min_seconds,
        progress=not args.no_progress,
        num_workers=args.workers,
    )
    print(report.summary())
    if args.out:
        atomic_write_json(args.out, report.to_dict())
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------- ssamba prepare
PRETRAIN_DATA = "audioset-unbalanced, librispeech, pretrain-mix"


def _add_prepare(subparsers) -> None:
    tasks = ", ".join(list_recipes())
    p = add_command(
        subparsers,
        "prepare",
        help="turn a downloaded dataset (official layout) into manifests for a recipe",
        description=(
            "Read a dataset in the layout its authors distribute (extracted; nothing is "
            "downloaded) and write manifests: one CSV (path,label) per split or fold, all.csv "
            "with a split column, class_labels_indices.csv, and prepare.json with the counts. "
            f"Tasks: {tasks}. The official pretraining data (docs/pretraining.md): "
            "audioset-unbalanced SRC (AudioSet-2M), librispeech SRC (960 h cut into clips "
            "under OUT/clips), then pretrain-mix AUDIOSET_OUT LIBRISPEECH_OUT (their mix); each "
            "writes train.csv (path,split) and prepare.json."
        ),
    )
    p.add_argument("task", help=f"task name: {tasks}; or {PRETRAIN_DATA}")
    p.add_argument(
        "source",
        metavar="SOURCE_DIR",
        nargs="+",
        help="the extracted dataset folder (pretrain-mix: the two folders written by "
        "audioset-unbalanced and librispeech)",
    )
    add_out(p)
    p.add_argument(
        "--format",
        choices=("csv", "json", "both"),
        default="csv",
        help="CSV manifests, SSAST JSON manifests, or both (pretraining data: CSV)",
    )
    p.add_argument(
        "--relative",
        action="store_true",
        help="write audio paths relative to the output folder (default: absolute)",
    )
    p.add_argument(
        "--rate-sample",
        type=non_negative_int,
        default=200,
        metavar="N",
        help="read the header of N files (spread over the set) to report native sample rates; "
        "0: skip",
    )
    g = p.add_argument_group("pretraining data")
    g.add_argument("--seconds", type=positive_float, default=10.0, metavar="S",
                   help="librispeech: clip length in seconds")  # fmt: skip
    g.add_argument("--min-seconds", type=non_negative_float, default=1.0, metavar="S",
                   help="librispeech: a shorter last piece of an utterance is dropped")  # fmt: skip
    g.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="librispeech: threads that cut utterances (default: 1)")  # fmt: skip
    g.add_argument("--resume", action="store_true", help="librispeech: continue an interrupted "
                   "run in OUT, keeping the clips already written (default: off)")  # fmt: skip
    g.add_argument("--valid-clips", dest="valid", type=non_negative_int, default=0, metavar="N",
                   help="pretrain-mix: clips held out at random into valid.csv "
                   "(default: 0)")  # fmt: skip
    deprecated_alias(g, "--valid", "--valid-clips", dest="valid", type=non_negative_int)
    g.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="pretrain-mix: seed of the held-out draw (default: 0)")  # fmt: skip
    add_overwrite(p)
    p.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from ssamba.recipes.pretraining_data import pretrain_task

    if pretrain_task(args.task):
        return run_prepare_pretraining(args, pretrain_task(args.task))
    from ssamba.recipes.prepare import read_dataset, write_manifests

    if len(args.source) != 1:
        raise UsageError(f"prepare {args.task}: one SOURCE_DIR, got {len(args.source)}")
    _refuse_existing(args.out, args.overwrite, "output folder")
    data = read_dataset(args.task, args.source[0])  # checks the layout before anything is removed
    prepare_output(args.out, args.overwrite, "output folder", folder=True)
    result = write_manifests(
        data, args.out, format=args.format, relative=args.relative, rate_sample=args.rate_sample
    )
    print(result.summary())
    return 0


def run_prepare_pretraining(args: argparse.Namespace, task: str) -> int:
    """``prepare audioset-unbalanced | librispeech | pretrain-mix``."""
    from ssamba.recipes import pretraining_data as pd

    wanted = 2 if task == "pretrain_mix" else 1
    if len(args.source) != wanted:
        what = "AUDIOSET_OUT LIBRISPEECH_OUT" if wanted == 2 else "one SOURCE_DIR"
        raise UsageError(f"prepare {args.task}: expected {what}, got {len(args.source)} folder(s)")
    if args.resume and task != "librispeech":
        raise UsageError("--resume continues an interrupted `prepare librispeech` only")
    if not args.resume:
        _refuse_existing(args.out, args.overwrite, "output folder")
        prepare_output(args.out, args.overwrite, "output folder", folder=True)
    if task == "audioset_unbalanced":
        result = pd.prepare_audioset_unbalanced(args.source[0], args.out, relative=args.relative)
    elif task == "librispeech":
        result = pd.prepare_librispeech(
            args.source[0], args.out, seconds=args.seconds, min_seconds=args.min_seconds,
            workers=args.workers, relative=args.relative,
        )  # fmt: skip
    else:
        result = pd.mix_pretraining(
            *args.source, args.out, valid=args.valid, seed=args.seed, relative=args.relative
        )
    print(result.summary())
    return 0


# ---------------------------------------------------------------------------- ssamba data
DATA_DESCRIPTION = (
    "Build the demo's data sets (16 kHz WAVs + CSV manifests path,label,split) from real audio "
    "found offline: TTS voices (espeak-ng, flite, festival), General MIDI soundfonts and the "
    "recordings of Debian game/theme packages. Deterministic from --seed; re-running with the "
    "same arguments reuses the files already built, other arguments replace them."
)


def _add_data(subparsers) -> None:
    p = add_command(
        subparsers,
        "data",
        help="build the demo data sets (keywords, instruments, speakers, pretraining mix)",
        description=DATA_DESCRIPTION,
    )
    sub = p.add_subparsers(title="data sets", metavar="BUILDER", dest="builder")
    add_command(sub, "sources", help="list the audio sources found and the packages missing")
    _add_keywords(sub)
    _add_instruments(sub)
    _add_speakers(sub)
    _add_pretrain_mix(sub)
    p.set_defaults(func=run_data, _data_parser=p)


def _add_keywords(sub) -> None:
    k = add_command(
        sub,
        "synth-keywords",
        help="12-class keyword spotting, 1 s TTS clips in noise (test voices unseen)",
        description="10 command words + unknown + silence spoken by TTS voices over noise. "
        "Valid and test voices are held out of training as whole voices.",
    )
    k.add_argument(
        "--per-class", type=positive_int, default=60, metavar="N", help="clips per class"
    )
    k.add_argument("--snr", type=float, nargs=2, default=(5.0, 25.0), metavar=("LO", "HI"),
                   help="SNR range in dB")  # fmt: skip
    _add_builder_common(k, "demo_out/data/keywords", tts=True)


def _add_instruments(sub) -> None:
    i = add_command(
        sub,
        "instruments",
        help="10 GM instrument families, 2 s notes (test programs unseen)",
        description="Notes of 10 General MIDI families from FluidR3_GM and TimGM6mb; 2 of the 8 "
        "programs of each family are test-only and 1 valid-only.",
    )
    i.add_argument(
        "--per-class", type=positive_int, default=60, metavar="N", help="clips per class"
    )
    i.add_argument("--seconds", type=positive_float, default=2.0, metavar="S", help="clip length")
    _add_builder_common(i, "demo_out/data/instruments")


def _add_speakers(sub) -> None:
    sp = add_command(
        sub,
        "speakers",
        help="15 real speakers (hedgewars voice packs), 2 s crops",
        description="Speaker identification over the 15 hedgewars voice-actor packs; lines are "
        "split by name so test lines are never heard in training.",
    )
    sp.add_argument(
        "--max-per-speaker",
        type=positive_int,
        metavar="N",
        help="cap lines per speaker (default: every line)",
    )
    sp.add_argument("--seconds", type=positive_float, default=2.0, metavar="S", help="clip length")
    _add_builder_common(sp, "demo_out/data/speakers")


def _add_pretrain_mix(sub) -> None:
    m = add_command(
        sub,
        "pretrain-mix",
        help="unlabelled pretraining corpus: speech, music, recordings, noise and mixtures",
        description="Unlabelled clips of five kinds: TTS sentences at random speaking rates and "
        "pitches; General MIDI notes, phrases, chords, arpeggios and drum patterns; crops of "
        "Debian recordings, sped up or slowed down at times; coloured noise, filtered or in "
        "bursts at times; and mixtures of two clips of different kinds. Only training voices and "
        "programs are used (no valid/test voice, program or speaker line of the labelled sets). "
        "Clip i depends on --seed, --seconds and i only: more --minutes in the same folder "
        "renders only the new clips. Writes manifest.txt (one path per line) and meta.csv (how "
        "each clip was made).",
    )
    m.add_argument("--minutes", type=positive_float, default=12.0, help="total minutes of audio")
    m.add_argument("--seconds", type=positive_float, default=2.0, metavar="S", help="clip length")
    m.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        metavar="N",
        help="threads that synthesize, render and write the clips (0: one)",
    )
    _add_builder_common(m, "demo_out/data/pretrain")


def _add_builder_common(p: argparse.ArgumentParser, default_out: str, tts: bool = False) -> None:
    add_out(p, required=False, default=default_out)
    # (default: 0) written out: the shared formatter leaves out falsy defaults
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="random seed (default: 0)")  # fmt: skip
    if tts:
        add_workers(p, default=2, what="synthesize speech")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the output folder and build from scratch (a folder that is not an "
        "earlier build is refused otherwise)",
    )
    add_progress(p)


def run_data(args: argparse.Namespace) -> int:
    if args.builder is None:
        args._data_parser.print_help()
        return 2
    if args.builder == "sources":
        from ssamba.demo import sources

        inventory = sources.inventory()
        print(sources.format_inventory(inventory))
        return 0 if all(v["found"] for v in inventory.values() if v["required"]) else 1
    from ssamba.demo import builders

    check_cache_folder(args.out, args.overwrite, "build.json", "folder (not a data build)")
    common = {"seed": args.seed, "progress": not args.no_progress}
    if args.builder == "synth-keywords":
        result = builders.build_keywords(
            args.out, args.per_class, snr_db=tuple(args.snr), workers=args.workers, **common
        )
    elif args.builder == "instruments":
        result = builders.build_instruments(
            args.out, args.per_class, clip_seconds=args.seconds, **common
        )
    elif args.builder == "speakers":
        result = builders.build_speakers(
            args.out, max_per_speaker=args.max_per_speaker, clip_seconds=args.seconds, **common
        )
    else:
        result = builders.build_pretrain_mix(
            args.out, args.minutes, seconds=args.seconds, workers=args.workers, **common
        )
    print(builders.format_summary(result))
    return 0


# ---------------------------------------------------------------------------- ssamba segment
def _add_segment(subparsers) -> None:
    p = add_command(
        subparsers,
        "segment",
        help="cut long recordings into fixed-length clips with a manifest",
        description=(
            "Cut each recording (files, or folders searched recursively) into clips of --seconds "
            "at its own sample rate and channels, without loading it whole. Clip k of "
            "sub/talk.wav is DIR/sub/talk-00000k.flac; DIR/manifest.csv lists the clips (a "
            "manifest every command reads). The last, shorter part is kept when it lasts at "
            "least --min-seconds."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders")
    add_out(p)
    p.add_argument("--seconds", type=positive_float, default=10.0, metavar="S", help="clip length")
    p.add_argument(
        "--min-seconds",
        type=non_negative_float,
        default=1.0,
        metavar="S",
        help="keep a recording's last, shorter clip when it lasts at least S seconds",
    )
    p.add_argument("--format", choices=("flac", "wav"), default="flac", help="clip format")
    add_overwrite(p)
    add_progress(p)
    p.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ssamba.data.segment import MANIFEST_NAME, find_recordings, segment_recordings

    total = len(find_recordings(args.inputs))  # checks the inputs before touching the output
    out = prepare_output(args.out, args.overwrite, "output folder", folder=True)
    with tqdm(total=total, unit="file", disable=args.no_progress) as bar:
        result = segment_recordings(
            args.inputs, out, args.seconds, args.min_seconds, args.format, progress=bar.update
        )
    print(
        f"{result['clips']} clips ({result['seconds'] / 3600:.2f} h) from "
        f"{result['recordings']} recordings -> {out / MANIFEST_NAME}"
    )
    if result["too_short"]:
        print(f"{len(result['too_short'])} recordings shorter than --min-seconds gave no clip")
    return 0


# ---------------------------------------------------------------------------- ssamba shard
def _add_shard(subparsers) -> None:
    p = add_command(
        subparsers,
        "shard",
        help="pack a data set into WebDataset tar shards for streaming",
        description=(
            "Write the clips of a manifest into DIR/shard-000000.tar, ... (WebDataset format: "
            "KEY.flac and KEY.json with the labels and duration; FLAC files are copied, others "
            "re-encoded losslessly) of at most --shard-size each, and DIR/index.json. Pass DIR, "
            "or DIR/shard-{000000..000123}.tar, wherever a manifest is expected (--train, "
            "--valid, ...); training streams them."
        ),
    )
    p.add_argument("manifest", help=MANIFEST_HELP)
    add_out(p)
    p.add_argument(
        "--shard-size",
        default="1GB",
        metavar="SIZE",
        help="largest shard, e.g. 500MB, 1GB, 2GiB",
    )
    add_overwrite(p)
    add_progress(p)
    p.set_defaults(func=run_shard)


def run_shard(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ssamba.data import ONE_SET_INPUTS, check_input, parse_size, read_manifest, write_shards

    check_input(args.manifest, ONE_SET_INPUTS, "`ssamba shard`")
    size = parse_size(args.shard_size)
    manifest = read_manifest(args.manifest)
    out = prepare_output(args.out, args.overwrite, "output folder", folder=True)
    with tqdm(total=len(manifest), unit="clip", disable=args.no_progress) as bar:
        index = write_shards(manifest, out, size, progress=bar.update)
    gb = sum(s["bytes"] for s in index["shards"]) / 1e9
    print(f"{index['clips']} clips in {len(index['shards'])} shards ({gb:.2f} GB) -> {out}")
    return 0

"""``ssamba data ...``: build the demo's data sets from real offline audio.

Registered by the main CLI (``ssamba.cli.SUBCOMMANDS``) through :func:`add_data_parser`::

    ssamba data sources                     # what is installed, what is missing
    ssamba data synth-keywords  [--out demo_out/data/keywords]    [--per-class 60] [--seed 0]
    ssamba data instruments     [--out demo_out/data/instruments] [--per-class 60] [--seed 0]
    ssamba data speakers        [--out demo_out/data/speakers]    [--max-per-speaker N]
    ssamba data pretrain-mix    [--out demo_out/data/pretrain]    [--minutes 12] [--seconds 2]
"""

from __future__ import annotations

import argparse

_DESCRIPTION = (
    "Build the demo's data sets (16 kHz WAVs + CSV manifests path,label,split) from real audio "
    "found offline: TTS voices (espeak-ng, flite, festival), General MIDI soundfonts and the "
    "recordings of Debian game/theme packages. Deterministic from --seed; re-running with the "
    "same arguments reuses the files already built."
)


def add_data_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="build the demo data sets (keywords, instruments, speakers, pretraining mix)",
        description=_DESCRIPTION,
    )
    sub = p.add_subparsers(title="data sets", metavar="BUILDER", dest="builder")

    s = sub.add_parser("sources", help="list the audio sources found and the packages missing")
    s.set_defaults(func=run_data)

    k = sub.add_parser(
        "synth-keywords",
        help="12-class keyword spotting, 1 s TTS clips in noise (test voices unseen)",
        description="10 command words + unknown + silence spoken by TTS voices over noise. "
        "Valid and test voices are held out of training as whole voices.",
    )
    k.add_argument("--per-class", type=int, default=60, metavar="N", help="clips per class (60)")
    k.add_argument("--snr", type=float, nargs=2, default=(5.0, 25.0), metavar=("LO", "HI"),
                   help="SNR range in dB (5 25)")  # fmt: skip
    _common(k, "demo_out/data/keywords", tts=True)

    i = sub.add_parser(
        "instruments",
        help="10 GM instrument families, 2 s notes (test programs unseen)",
        description="Notes of 10 General MIDI families from FluidR3_GM and TimGM6mb; 2 of the 8 "
        "programs of each family are test-only and 1 valid-only.",
    )
    i.add_argument("--per-class", type=int, default=60, metavar="N", help="clips per class (60)")
    i.add_argument("--seconds", type=float, default=2.0, help="clip length (2)")
    _common(i, "demo_out/data/instruments")

    sp = sub.add_parser(
        "speakers",
        help="15 real speakers (hedgewars voice packs), 2 s crops",
        description="Speaker identification over the 15 hedgewars voice-actor packs; lines are "
        "split by name so test lines are never heard in training.",
    )
    sp.add_argument("--max-per-speaker", type=int, metavar="N", help="cap lines per speaker")
    sp.add_argument("--seconds", type=float, default=2.0, help="clip length (2)")
    _common(sp, "demo_out/data/speakers")

    m = sub.add_parser(
        "pretrain-mix",
        help="unlabelled pretraining corpus: TTS speech, GM notes/phrases, real recordings",
        description="Unlabelled clips from training voices/programs only (no valid/test voice, "
        "program or speaker line of the labelled sets) and Debian recordings. Writes "
        "manifest.txt (one path per line).",
    )
    m.add_argument("--minutes", type=float, default=12.0, help="total minutes of audio (12)")
    m.add_argument("--seconds", type=float, default=2.0, help="clip length (2)")
    _common(m, "demo_out/data/pretrain", tts=True)

    p.set_defaults(func=run_data, _data_parser=p)


def _common(p: argparse.ArgumentParser, default_out: str, tts: bool = False) -> None:
    p.add_argument("--out", "-o", default=default_out, help=f"output folder ({default_out})")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    if tts:
        p.add_argument(
            "--workers", type=int, default=2, metavar="N", help="parallel TTS processes (2)"
        )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_data)


def run_data(args: argparse.Namespace) -> int:
    from ssamba.cli import CommandError

    from . import builders as B
    from . import sources as S

    builder = getattr(args, "builder", None)
    if builder is None:
        args._data_parser.print_help()
        return 2
    if builder == "sources":
        inv = S.inventory()
        print(S.format_inventory(inv))
        return 0 if all(v["found"] for v in inv.values() if v["required"]) else 1
    progress = not args.no_progress
    try:
        if builder == "synth-keywords":
            result = B.build_keywords(
                args.out,
                per_class=args.per_class,
                seed=args.seed,
                snr_db=tuple(args.snr),
                workers=args.workers,
                progress=progress,
            )
        elif builder == "instruments":
            result = B.build_instruments(
                args.out,
                per_class=args.per_class,
                seed=args.seed,
                clip_seconds=args.seconds,
                progress=progress,
            )
        elif builder == "speakers":
            result = B.build_speakers(
                args.out,
                seed=args.seed,
                max_per_speaker=args.max_per_speaker,
                clip_seconds=args.seconds,
                progress=progress,
            )
        elif builder == "pretrain-mix":
            result = B.build_pretrain_mix(
                args.out,
                minutes=args.minutes,
                seed=args.seed,
                seconds=args.seconds,
                workers=args.workers,
                progress=progress,
            )
        else:  # pragma: no cover - argparse restricts the choices
            raise CommandError(f"unknown data set {builder!r}")
    except S.MissingSourceError as e:
        raise CommandError(str(e)) from None
    print(B.format_summary(result))
    return 0

"""The ``ssamba`` command line: a thin layer over the library.

Each module of this package holds one family of commands: its argparse set-up, its printing and
the files it writes. A module's ``register(subparsers)`` adds its commands; a command's function
takes the parsed arguments, imports the library on call (so ``--help`` never loads torch) and
returns the exit status.

Exit status: 0 success; 1 the command ran and found problems (``check-data``); 2 bad input, printed
as one ``error: ...`` line without a traceback (every :class:`ssamba.errors.SsambaError`, and
``OSError`` for missing or unreadable files); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ssamba.cli.common import apply_config, config_path
from ssamba.errors import SsambaError

PROG = "ssamba"

# TEMPORARY during the move of argparse code out of the library (removed before release).
from ssamba.errors import UsageError as CommandError  # noqa: E402,F401

#: Command modules, in the order ``ssamba --help`` lists their commands.
COMMAND_MODULES = (
    "demo",
    "data",
    "train",
    "dasl",
    "evaluate",
    "embed",
    "checkpoints",
    "export",
    "bench",
    "plot",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ssamba")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked (keeps start-up fast)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        kwargs.update(nargs=0, default=argparse.SUPPRESS, help="show the version and exit")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="SSAMBA / SSAST: self-supervised audio models (bidirectional Mamba and ViT).",
        epilog="`ssamba COMMAND --help` describes a command and its options.",
    )
    parser.add_argument("--version", action=_VersionAction)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"ssamba.cli.{name}").register(subparsers)
    return parser


def _subparser(parser: argparse.ArgumentParser, argv: list[str]):
    """The sub-command parser ``argv`` names, if any."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for arg in argv:
                if not arg.startswith("-"):
                    return action.choices.get(arg)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        config = config_path(argv)
        sub = _subparser(parser, argv) if config else None
        if sub is not None and any(a.dest == "config" for a in sub._actions):
            apply_config(sub, config)
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (SsambaError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(e: BaseException) -> str:
    """An exception as one line: ``path: reason`` for OS errors, the message otherwise."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__

"""The ``ssamba`` command line: a thin layer over the library.

Each module of this package holds one family of commands: its argparse set-up, its printing and
the files it writes. A module's ``register(subparsers)`` adds its commands; a command's function
takes the parsed arguments, imports the library on call (so ``--help`` never loads torch) and
returns the exit status.

Exit status: 0 success; 1 the command ran and found problems (``check-data``), or failed at run
time (any exception that is not bad input: one ``error: internal error: ...`` line); 2 bad input,
printed as one ``error: ...`` line (every :class:`ssamba.errors.SsambaError`, an option argparse
rejects, and ``OSError`` for missing or unreadable files); 130 interrupted. A traceback is printed
only under ``ssamba --debug COMMAND ...`` (or the environment variable ``SSAMBA_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from ssamba.allocator import keep_freed_memory
from ssamba.cli.common import Parser, apply_config, config_path
from ssamba.errors import SsambaError

PROG = "ssamba"

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
    parser = Parser(
        prog=PROG,
        description="SSAMBA / SSAST: self-supervised audio models (bidirectional Mamba and ViT).",
        epilog="`ssamba COMMAND --help` describes a command and its options.",
    )
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the full traceback of an error (also: environment SSAMBA_DEBUG=1)",
    )
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


def debug_enabled(argv: Sequence[str]) -> bool:
    """``--debug`` before the command, or ``SSAMBA_DEBUG`` set to anything but empty/0."""
    command = next((k for k, a in enumerate(argv) if not a.startswith("-")), len(argv))
    env = os.environ.get("SSAMBA_DEBUG", "").strip().lower()
    return "--debug" in argv[:command] or env not in ("", "0", "false", "no")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (SsambaError, OSError) as e:  # bad input: the message says what to change
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # a failure at run time (or a bug): one line unless --debug
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run `ssamba --debug ...` for the traceback)"
        print(f"error: internal error: {type(e).__name__}: {one_line(e)}{hint}", file=sys.stderr)
        return 1


def _run(argv: list[str]) -> int:
    parser = build_parser()
    config = config_path(argv)
    parser.chosen = _subparser(parser, argv)  # where an unknown option's near miss is looked up
    sub = parser.chosen if config else None
    if sub is not None and any(a.dest == "config" for a in sub._actions):
        apply_config(sub, config)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    keep_freed_memory()  # long sequences: no fresh mmap per layer (ssamba/allocator.py)
    return int(args.func(args) or 0)


def one_line(e: BaseException) -> str:
    """An exception as one line: ``path: reason`` for OS errors, the message otherwise."""
    if isinstance(e, OSError) and e.filename and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__

"""What every command shares: option spellings, help formatting, ``--config`` files, output
folders. One convention for all commands:

- ``-c/--checkpoint`` a model to load (preset name, ``save_pretrained`` folder, official
  ``.pth``, released name, Hub id or ``hf://ORG/NAME/FILE``), ``-o/--out`` the output folder
  (or file), ``--workers`` loader processes, ``--overwrite`` to replace existing output
  (refused otherwise), ``--no-progress``;
- every option's help shows its default;
- ``--config FILE`` (JSON or TOML) where a command has many settings: defaults < file < flags.

Nothing here imports torch: ``ssamba --help`` and ``ssamba COMMAND --help`` stay fast.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ssamba.constants import PATCH
from ssamba.errors import ConfigError, UsageError, did_you_mean

# Keys a run.json records that are not command-line settings: ignored when it is replayed.
RECORDED_ONLY = frozenset(
    {
        "command",
        "version",
        "scan_backend",
        "torch",
        "world_size",
        "git",
        "debug",
        "numba",
        "triton",
        "devices",
    }  # fmt: skip
)


# --train/--valid/--test, the same in every command that takes them (ssamba.data.read_splits)
TRAIN_HELP = (
    "PATH:SPLIT takes one split of a manifest with a split column; such a manifest given alone "
    "also serves --valid and --test (its valid and test rows)"
)
VALID_HELP = "default: --train's valid rows, when it has a split column"
TEST_HELP = "default: --train's test rows, when it has a split column; else none"
OVERLAP_HELP = (
    "run although files of --train are also in --valid/--test (a deliberate check; refused "
    "otherwise: their scores would not be held out)"
)


DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda if available, else cpu)"
NORMALIZE_HELP = (
    "fbank normalisation: auto (the checkpoint's own statistics; AudioSet for a preset), a "
    "preset, 'MEAN,STD', a stats JSON (`ssamba stats`) or none"
)


class ArgumentError(UsageError):
    """An option argparse rejected (unknown, missing, or a value its type refuses)."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: it raises :class:`ArgumentError` (the
    command line prints ``error: ...`` and exits 2) instead of printing the usage and exiting.
    Sub-command parsers are of the same class (argparse makes them with ``type(parent)``).

    Abbreviated options are refused (``allow_abbrev=False``): a misspelt ``--max-step`` is an
    error that suggests ``--max-steps``, not silently taken for it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise ArgumentError(
            f"{self.prog}: {message}{self._hint(message)} (see `{self.prog} --help`)"
        )

    def _hint(self, message: str) -> str:
        """``; did you mean X?`` for an invalid choice or an unknown option close to a known one."""
        choice = re.match(
            r"argument (\S+): invalid choice: '([^']*)' \(choose from (.*)\)$", message
        )
        if choice:
            options = [c.strip().strip("'") for c in choice.group(3).split(",")]
            return did_you_mean(choice.group(2), options)
        unknown = re.match(r"unrecognized arguments: (.*)$", message)
        if unknown:
            # the top-level parser reports a sub-command's unknown options: look in that one's
            parsers = [self, *([self.chosen] if getattr(self, "chosen", None) else [])]
            known = [
                s
                for p in parsers
                for a in p._actions
                for s in a.option_strings
                if a.help != argparse.SUPPRESS
            ]
            for arg in unknown.group(1).split():
                flag = arg.split("=", 1)[0]
                if flag.startswith("--"):
                    match = difflib.get_close_matches(flag, known, n=1, cutoff=0.8)
                    if match:
                        return f"; did you mean {match[0]}?"
        return ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after every option whose help does not already state its default.

    Flags that are off by default and options whose help says what their absence means
    (``default: ...`` in the text) are left as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text.lower() or default is None or default is False:
            return text
        if default == argparse.SUPPRESS:
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a required positional has no default
        value = default
        if isinstance(value, (list, tuple)):
            value = " ".join(str(v) for v in value)
        return f"{text} (default: {str(value).replace('%', '%%')})"


def add_command(subparsers, name: str, help: str, description: str | None = None, **kw):
    """A sub-command parser with the shared formatter; ``help`` is its line in ``ssamba --help``."""
    return subparsers.add_parser(
        name, help=help, description=description or help, formatter_class=HelpFormatter, **kw
    )


def hidden_alias(p: argparse.ArgumentParser, *flags: str, dest: str, **kw) -> None:
    """An old spelling kept for one release: it works, but ``--help`` no longer shows it."""
    p.add_argument(*flags, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)


class _Deprecated(argparse.Action):
    """Stores like the new option and prints one ``warning:`` line naming the new spelling."""

    def __init__(self, option_strings, dest, new: str, flag: bool = False, **kw):
        self.new = new
        if flag:
            kw.update(nargs=0)
        self.flag = flag
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated and goes in the next release; use "
              f"{self.new}", file=sys.stderr)  # fmt: skip
        setattr(namespace, self.dest, True if self.flag else values)


def deprecated_alias(
    p: argparse.ArgumentParser, old: str, new: str, dest: str, flag: bool = False, **kw
) -> None:
    """``old`` kept for one release as a hidden spelling of ``new`` (same ``dest``): it works
    and says, in one line, to use ``new``."""
    p.add_argument(old, dest=dest, action=_Deprecated, new=new, flag=flag,
                   help=argparse.SUPPRESS, default=argparse.SUPPRESS, **kw)  # fmt: skip


def add_checkpoint(
    p: argparse.ArgumentParser,
    required: bool = True,
    help: str = "model to load: preset name, save_pretrained folder, official .pth, released "
    "name, Hub id ORG/NAME or a file in a Hub repository hf://ORG/NAME/FILE",
    **kw,
) -> None:
    p.add_argument("-c", "--checkpoint", required=required, metavar="CKPT", help=help, **kw)


def add_out(
    p: argparse.ArgumentParser, required: bool = True, help: str = "output folder", **kw
) -> None:
    p.add_argument("-o", "--out", required=required, metavar="DIR", help=help, **kw)


WORKERS_DEFAULT = "auto: one per core, at most 8"  # ssamba.configs.default_workers


def add_workers(p: argparse.ArgumentParser, default: int | None = None, what: str = "load data"):
    """``--workers N``: the same default everywhere (:func:`ssamba.configs.default_workers`)."""
    from ssamba.configs import default_workers  # torch-free

    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=default_workers() if default is None else default,
        metavar="N",
        help=f"{what} in N worker processes (0: in the main process; default: {WORKERS_DEFAULT})"
        if default is None
        else f"{what} in N worker processes (0: in the main process)",
    )
    hidden_alias(p, "--num-workers", dest="workers", type=non_negative_int)


def add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing output (refused otherwise)"
    )


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_config(p: argparse.ArgumentParser) -> None:
    """``--config FILE``: settings from JSON or TOML (a run's own run.json replays it)."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from a JSON or TOML file (flags given on the command line win; "
        "default: none)",
    )
    p.set_defaults(_config_parser=p)


# ---------------------------------------------------------------------------- value types
def _number(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def target_frames(text: str) -> int:
    """A clip length in frames: at least one patch (16 frames)."""
    value = _number(text, int, "an integer")
    if value < PATCH:
        raise argparse.ArgumentTypeError(f"must be >= {PATCH} frames (one patch), got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float, "a number")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = _number(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def unit_fraction(text: str) -> float:
    """A number in (0, 1]: a factor that may shrink a value but never zero or grow it."""
    value = _number(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be > 0 and <= 1, got {text}")
    return value


# ---------------------------------------------------------------------------- audio inputs
def check_input_forms(command: str, accepted: Iterable[str], **options: str | None) -> None:
    """Refuse, in one line naming it, a ``--option`` value of a form that ``ssamba COMMAND``
    does not take (:func:`ssamba.data.check_input` recognises the form; ``accepted``: e.g.
    ``ssamba.data.STREAMED_INPUTS``). Imported on call: ``ssamba.data`` loads torch."""
    from ssamba.data import check_input

    for option, value in options.items():
        if value is not None:
            check_input(value, accepted, f"`ssamba {command} --{option.replace('_', '-')}`")


# ---------------------------------------------------------------------------- output folders
def prepare_output(path: str | os.PathLike, overwrite: bool, what: str = "output") -> Path:
    """Refuse to replace existing output unless ``overwrite``; then clear it. Returns the path.

    An empty folder counts as no output. With ``overwrite`` a file is removed and a folder
    emptied (removed and made again)."""
    path = Path(path)
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not overwrite:
        raise UsageError(f"{path}: {what} exists; pass --overwrite to replace it")
    if exists:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


# ---------------------------------------------------------------------------- --config files
def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The settings of a JSON or TOML file (by suffix; other suffixes are tried as JSON)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: {err.strerror or err}") from None
    if path.suffix.lower() == ".toml":
        import tomllib  # Python >= 3.11; on 3.10 the `tomli` backport under the same API

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: not valid TOML ({err})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings, got {type(data).__name__}")
    return data


def config_defaults(
    parser: argparse.ArgumentParser, data: dict[str, Any], source: str, ignore: Iterable[str] = ()
) -> dict[str, Any]:
    """Check ``data`` against ``parser``'s options; the values to use as its new defaults.

    Keys are option destinations (``batch_size`` or ``batch-size``); an unknown key is an error
    naming it (a misspelt setting must not be silently ignored)."""
    actions = {
        a.dest: a
        for a in parser._actions
        if a.dest not in ("help", "config", argparse.SUPPRESS) and not a.dest.startswith("_")
    }
    skip = set(ignore) | RECORDED_ONLY
    values, unknown = {}, []
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest in skip:
            continue
        if dest not in actions:
            unknown.append(key)
            continue
        action = actions[dest]
        if action.choices is not None and value is not None:
            items = value if isinstance(value, list) else [value]
            bad = [v for v in items if v not in action.choices]
            if bad:
                choices = ", ".join(map(str, action.choices))
                raise ConfigError(f"{source}: {key}={bad[0]!r} is not one of: {choices}")
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        elif action.type is not None and value is not None and not isinstance(value, list):
            try:
                value = action.type(str(value))
            except (argparse.ArgumentTypeError, ValueError) as err:
                raise ConfigError(f"{source}: {key}={value!r}: {err}") from None
        values[dest] = value
    if unknown:
        known = ", ".join(sorted(actions))
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)} (known: {known})")
    return values


def config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config F`` or ``--config=F``), if any."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def apply_config(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the file's settings ``parser``'s defaults (so flags still win); an option that the
    file sets is no longer required on the command line."""
    values = config_defaults(parser, read_config_file(path), str(path))
    for action in parser._actions:
        if action.dest in values:
            action.required = False
    parser.set_defaults(**values)

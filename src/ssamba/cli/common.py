"""What the commands share, and the only cli module the others import: option spellings, help
formatting, value types, ``--config`` files, output folders, loading the model ``-c/--checkpoint``
names, the options built from the config dataclasses, the embedding options. One convention for
all commands:

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
import contextlib
import dataclasses
import difflib
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ssamba.configs import PRECISIONS, field_defaults
from ssamba.constants import BAD_FILE_POLICIES, PATCH
from ssamba.errors import ConfigError, SsambaError, UsageError, did_you_mean
from ssamba.models.config import list_models

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
        "--overwrite",
        action="store_true",
        help="replace existing output (refused otherwise; a folder only if ssamba made it)",
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
# Written into every output folder ssamba makes: --overwrite empties only folders that hold it, so
# a folder of the user's, named by mistake, is never emptied (the file says so to a reader).
OUTPUT_MARKER = ".ssamba-output"
_MARKER_TEXT = "This folder was made by ssamba; `--overwrite` may empty it.\n"


def prepare_output(
    path: str | os.PathLike,
    overwrite: bool,
    what: str = "output",
    files: Iterable[str] = (),
    folder: bool = False,
) -> Path:
    """Refuse to replace existing output unless ``overwrite``; then clear it. Returns the path.

    An empty folder counts as no output. With ``overwrite`` a file is removed and a folder
    emptied (removed and made again). ``files``: the names a command writes into the folder
    ``path`` when it knows them all; then only those count as its output and only those are
    removed, whatever else the folder holds stays (``ssamba bench --out docs/bench`` must not
    take the folder's other results with it). ``folder``: ``path`` is a folder the command fills;
    it is made (with :data:`OUTPUT_MARKER` in it) and ``overwrite`` empties it only when it holds
    that marker, i.e. when ssamba made it."""
    path = Path(path)
    if folder:
        return _prepare_folder(path, overwrite, what)
    if files:
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path}: not a folder (the {what} go into one)")
        mine = [path / name for name in files if (path / name).exists()]
        if mine and not overwrite:
            raise UsageError(f"{path}: {what} exists ({', '.join(p.name for p in mine)}); "
                             "pass --overwrite to replace it (those files only)")  # fmt: skip
        for old in mine:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        return path
    exists = path.is_file() or (  # a folder holding only ssamba's marker counts as empty
        path.is_dir() and any(p.name != OUTPUT_MARKER for p in path.iterdir())
    )
    if exists and not overwrite:
        raise UsageError(f"{path}: {what} exists; pass --overwrite to replace it")
    if exists:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return path


def _prepare_folder(path: Path, overwrite: bool, what: str) -> Path:
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path}: not a folder (the {what} is one)")
    held = path.is_dir() and any(p.name != OUTPUT_MARKER for p in path.iterdir())
    if held and not overwrite:
        raise UsageError(f"{path}: {what} exists; pass --overwrite to replace it")
    if held and not (path / OUTPUT_MARKER).exists():
        raise UsageError(f"{path}: holds files ssamba did not write (no {OUTPUT_MARKER} in it), "
                         "and --overwrite empties only folders ssamba made: empty or remove it "
                         "yourself, or choose another folder")  # fmt: skip
    if held:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / OUTPUT_MARKER).write_text(_MARKER_TEXT)
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


# ---------------------------------------------------------------------------- the model to load
@contextlib.contextmanager
def model_errors():
    """Plain ValueErrors of model construction (an unknown preset, a bad override) as
    UsageError, so the command prints one line instead of a traceback."""
    try:
        yield
    except ValueError as err:
        if isinstance(err, SsambaError):
            raise
        raise UsageError(str(err)) from None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(spec: str | None) -> str | None:
    """``--device`` checked before any work: a device torch knows and this machine has (torch's
    own errors for these are tracebacks from deep inside the first ``.to()``)."""
    if spec is None:
        return None
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {spec!r}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else (
                "no CUDA device is visible"
            )  # fmt: skip
            raise UsageError(f"--device {spec}: CUDA is not available ({why}); use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {spec}: there are {count} CUDA device(s) (cuda:0..)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(f"--device {spec}: MPS is not available; use --device cpu")
    elif device.type != "cpu":
        raise UsageError(f"--device {spec!r}: expected cpu, cuda or cuda:N")
    return spec


def check_model_conflict(model: str | None, checkpoint: str | None) -> None:
    """``--model`` given together with ``-c/--checkpoint`` must describe the same architecture
    and width: the checkpoint decides the model, so a different ``--model`` would be ignored
    (and recorded in run.json as if it had been used)."""
    if model is None or checkpoint is None or str(checkpoint).lower() == "none":
        return
    from ssamba.models.config import PRESETS

    if model not in PRESETS:
        return
    saved = _checkpoint_shape(checkpoint)
    if saved is None:
        return
    want = PRESETS[model].config
    wanted = (want["arch"], want["embed_dim"])
    if saved != wanted:
        raise UsageError(
            f"--model {model} ({wanted[0]}, width {wanted[1]}) conflicts with -c/--checkpoint "
            f"{checkpoint} ({saved[0]}, width {saved[1]}): the checkpoint decides the model; "
            "drop --model"
        )


def _checkpoint_shape(checkpoint: str) -> tuple[str, int] | None:
    """(arch, embed_dim) of a saved folder or an official file; None for a preset name."""
    import json

    from ssamba.checkpoints import is_hub_file, resolve_checkpoint

    path = Path(resolve_checkpoint(checkpoint)) if is_hub_file(checkpoint) else Path(checkpoint)
    if path.is_dir() and (path / "config.json").is_file():
        try:
            cfg = json.loads((path / "config.json").read_text())
            return cfg.get("arch", "ssamba"), cfg.get("embed_dim")
        except (OSError, ValueError, AttributeError):
            return None  # loading it reports the problem
    if path.is_file():
        from ssamba.checkpoints import official_config, read_official

        cfg, _ = official_config(read_official(path), str(path))
        return cfg.arch, cfg.embed_dim
    return None


def load_checkpoint(spec: str, device: str | None = None, **overrides):
    """The model ``-c/--checkpoint`` names, in eval mode on ``device`` (default: cuda if any).

    A preset name builds a model with random weights: said on stderr, since its outputs mean
    nothing."""
    import warnings

    from ssamba.checkpoints import RandomWeightsWarning, load_model

    check_device(device)
    with model_errors(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomWeightsWarning)
        model = load_model(spec, **overrides)
    for w in caught:  # the library's warning (a preset: random weights), as one plain line
        print(f"warning: {w.message}", file=sys.stderr)
    return model.to(device or default_device()).eval()


def either(args: argparse.Namespace, option: str, positional: str, flag: str) -> str:
    """The value given as ``flag`` or as the (old, hidden) positional; exactly one of them."""
    a, b = getattr(args, option), getattr(args, positional)
    if a is not None and b is not None and a != b:
        raise UsageError(f"{flag} given twice ({a} and {b})")
    if a is None and b is None:
        raise UsageError(f"{flag} is required")
    return a if a is not None else b


# ---------------------------------------------------------------------------- config options
def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return " ".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


class ConfigOptions:
    """Adds options for fields of a config class: destination = the field's name, default = the
    field's default. Fields in ``from_recipe`` may come from ``--recipe``: their options have no
    default of their own (absent from the parsed arguments unless given), and their help names
    both."""

    def __init__(self, cls, from_recipe=()):
        self.defaults = field_defaults(cls)
        self.from_recipe = set(from_recipe)

    def add(self, parser, name: str, help: str, *flags: str, shown: str | None = None, **kw):
        """``shown``: the default as --help states it, where the field's own is resolved later
        (None: the checkpoint's)."""
        flags = flags or (f"--{name.replace('_', '-')}",)
        default = self.defaults[name]
        if name in self.from_recipe:
            if "default" not in help.lower():  # printed once
                help = f"{help} (default: {shown or _shown(default)}, or the --recipe's)"
            kw["default"] = argparse.SUPPRESS
        elif kw.get("required"):
            kw["default"] = None  # (a --config file may set it)
        else:
            if default == 0 and not isinstance(default, bool):
                help = f"{help} (default: 0)"  # the shared formatter skips falsy defaults
            kw["default"] = default
        parser.add_argument(*flags, dest=name, help=help, **kw)


class StoreGiven(argparse.Action):
    """Stores the value and notes that the option was given (``_given_<dest>``): a default
    cannot conflict with another option, a value given on purpose can."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"_given_{self.dest}", True)


def given_model(args) -> str | None:
    """``--model`` when given on the command line (None when it is the default)."""
    return args.model if getattr(args, "_given_model", False) else None


def add_starting_weights(g, options: ConfigOptions) -> None:
    """``-c/--checkpoint`` to start from (``--init``, its old name) and the model options: what
    fine-tuning and DASL share."""
    add_checkpoint(
        g,
        required=False,
        help="weights to start from: save_pretrained folder or official .pth (default: none: a "
        "random --model)",
    )
    hidden_alias(g, "--init", dest="checkpoint")
    add_model_options(g, options)


def add_model_options(p, options: ConfigOptions, drop_path: bool = False) -> None:
    """``--model PRESET``, ``-c/--checkpoint`` and the model config overrides."""
    options.add(p, "model", f"the preset to build ({', '.join(list_models())})", metavar="PRESET",
                choices=list_models(), action=StoreGiven)  # fmt: skip
    p.add_argument(
        "--depth",
        type=positive_int,
        metavar="N",
        help="override the preset's depth (default: the preset's)",
    )
    if drop_path:
        p.add_argument(
            "--drop-path",
            type=fraction,
            help="override the stochastic depth rate (default: the preset's)",
        )
    shortcuts = "--depth and --drop-path win" if drop_path else "--depth wins"
    options.add(
        p,
        "model_overrides",
        f"model config fields to override, as a JSON object, e.g. '{{\"depth\": 4}}' "
        f"(default: none; {shortcuts})",
        metavar="JSON",
    )


def add_train_options(p, options: ConfigOptions) -> None:
    """The options of every training command (:class:`~ssamba.configs.TrainConfig`'s fields)."""
    g = p.add_argument_group("optimisation")
    add = options.add
    add(g, "batch_size", "global batch (all ranks together)", type=positive_int, metavar="N")
    add(g, "accum_steps", "gradient accumulation steps", type=positive_int, metavar="N")
    add(g, "lr", "learning rate", type=positive_float)
    add(g, "weight_decay", "weight decay", type=non_negative_float)
    add(g, "betas", "Adam betas", type=fraction, nargs=2, metavar=("B1", "B2"))
    add(g, "warmup_steps", "steps of linear learning-rate warm-up", type=non_negative_int,
        metavar="N")  # fmt: skip
    add(g, "epochs", "epochs to train", type=positive_int, metavar="N")
    add(g, "max_steps", "stop after N steps (default: --epochs decides)", type=positive_int,
        metavar="N")  # fmt: skip
    add(g, "max_minutes", "also stop (and save) after this much training time (default: no "
        "limit)", type=positive_float, metavar="MIN")  # fmt: skip
    add(g, "grad_clip", "clip the gradient norm to this value (default: no clipping)",
        type=positive_float)  # fmt: skip
    add(
        g,
        "precision",
        "fp32; bf16 autocast; or fp16 autocast with dynamic loss scaling",
        choices=PRECISIONS,
    )
    g = p.add_argument_group("run")
    add_out(g, help="output folder (run.json, metrics, checkpoints, best/ and final/ models)")
    add(g, "seed", "random seed (weights, data order, masks, augmentation)",
        type=non_negative_int, metavar="N")  # fmt: skip
    add(g, "eval_every", "evaluate every N steps; 0: every epoch", type=non_negative_int,
        metavar="N")  # fmt: skip
    add(g, "save_every", "checkpoint every N steps; 0: every epoch", type=non_negative_int,
        metavar="N")  # fmt: skip
    add(g, "keep", "checkpoints to keep besides best/ and final/", type=positive_int, metavar="N")
    add(g, "log_every", "steps between metric lines", type=positive_int, metavar="N")
    add(g, "logger", "where metrics go, comma-separated: jsonl (metrics.jsonl, always "
        "written), tensorboard (tb/), wandb (wandb/; WANDB_MODE=offline keeps it local)",
        metavar="LIST")  # fmt: skip
    add_workers(g, what="load training data")
    g.add_argument("--device", help=DEVICE_HELP)
    add(g, "allow_overlap", OVERLAP_HELP, action="store_true")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_overwrite(g)
    add_progress(g)
    add_config(p)


def _model_overrides(args) -> dict:
    value = getattr(args, "model_overrides", None) or {}
    if isinstance(value, str):  # from the command line; a --config file gives a table
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise UsageError(f"--model-overrides: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise UsageError(f"--model-overrides must be a JSON object, got {value!r}")
    value = dict(value)
    for name in ("depth", "drop_path", "norm"):
        if getattr(args, name, None) is not None:
            value[name] = getattr(args, name)
    if getattr(args, "unidirectional", False):
        value["bidirectional"] = False
    if getattr(args, "residual_fp32", None) is not None:
        value["residual_in_fp32"] = args.residual_fp32
    return value


def config_values(args, cls) -> dict[str, Any]:
    """The values of ``cls``'s fields in the parsed ``args`` (fields not in ``args`` left out)."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    values["model_overrides"] = _model_overrides(args)
    values["progress"] = not args.no_progress
    if str(values.get("checkpoint")).lower() == "none":  # the old `--init none`: a fresh model
        values["checkpoint"] = None
    return values


@contextlib.contextmanager
def warn_if_random(checkpoint: str | None, model: str, what: str):
    """Without -c/--checkpoint, say on stderr that ``what`` starts from random weights (as
    embed and probe do), in place of the library's RandomWeightsWarning."""
    from ssamba.checkpoints import RandomWeightsWarning

    if checkpoint is None and is_main_process():
        print(f"warning: no -c/--checkpoint: {what} starts from RANDOM weights (a fresh "
              f"{model})", file=sys.stderr)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        yield


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the process that prints."""
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------- embedding options
def add_embedding_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``embed`` and ``probe``: what to embed and how."""
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-1],
        metavar="I",
        help="layer indices to concatenate (-1: the final normalised output)",
    )
    p.add_argument(
        "--window",
        type=positive_float,
        metavar="S",
        help="process long audio in windows of S seconds (default: whole clips)",
    )
    p.add_argument(
        "--hop", type=positive_float, metavar="S", help="window hop in seconds (default: --window)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=8, metavar="N", help="clips per batch"
    )
    p.add_argument("--device", help=DEVICE_HELP)


def add_bad_file_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-bad-file",
        choices=BAD_FILE_POLICIES,
        default="error",
        help="stop at an unreadable file, or leave it out, list it and count it",
    )


def check_window(args: argparse.Namespace) -> None:
    if args.hop is not None and args.window is None:
        raise UsageError("--hop needs --window")


def bad_file_error(err: Exception) -> UsageError:
    return UsageError(f"cannot embed {err} (--on-bad-file skip leaves bad files out)")


# ---------------------------------------------------------------------------- cache folders
def check_cache_folder(path: str, overwrite: bool, marker: str, what: str) -> None:
    """An output folder that a command reuses as a cache (the data builders, the demo).

    An earlier build (it holds ``marker``) is reused; any other non-empty folder is refused
    unless ``overwrite``, which also empties an earlier build (to start from scratch)."""
    folder = Path(path)
    if overwrite or not (folder / marker).exists():
        prepare_output(folder, overwrite, what, folder=True)

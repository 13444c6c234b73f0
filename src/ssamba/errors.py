"""Every exception the library raises on purpose, in one place.

Each one means "this input, or this state, cannot go on" and carries a one-line message that names
the input and the problem. The command line prints ``error: <message>`` and exits 2 for any
:class:`SsambaError` (and for ``OSError``: a missing or unreadable file); anything else is a
runtime failure: one ``error: internal error: ...`` line and exit 1, the traceback only under
``ssamba --debug`` (or ``SSAMBA_DEBUG=1``). This module imports nothing, so every layer can use it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


def closest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` was most likely meant to be (another case, ``-`` for ``_``, a
    file suffix, a typo), or None when none is close."""
    candidates = list(candidates)

    def key(text: str) -> str:
        text = str(text).strip().lower()
        for suffix in (".pth", ".pt"):
            text = text.removesuffix(suffix)
        return text.replace("-", "_")

    wanted = key(os.path.basename(str(name)) or str(name))
    by_key = {key(c): c for c in candidates}
    if wanted in by_key:
        return by_key[wanted]
    bare = {k.replace("_", ""): c for k, c in by_key.items()}
    if wanted.replace("_", "") in bare:
        return bare[wanted.replace("_", "")]
    close = difflib.get_close_matches(wanted, list(by_key), n=1, cutoff=0.8)
    return by_key[close[0]] if close else None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the closest candidate (see :func:`closest_name`), else ``""``."""
    match = closest_name(name, candidates)
    return f"; did you mean {match}?" if match is not None and match != name else ""


class SsambaError(Exception):
    """Base class: bad input or a state the library cannot go on from; the message says why."""


class UsageError(SsambaError, ValueError):
    """An argument value that cannot work (``batch_size=0``, a window without a hop, ...)."""


class WaveformTypeError(UsageError, TypeError):
    """A waveform of the wrong kind (integer PCM where float samples are expected): a
    :class:`UsageError` for the command line's one error line, a ``TypeError`` for Python."""


class AudioError(SsambaError, ValueError):
    """An audio file could not be turned into samples.

    ``str(err)`` reads ``"<path>: <problem>"``; the parts are in ``err.path`` and ``err.problem``.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # keep the two-argument constructor picklable (DataLoader workers)
        return (type(self), (self.path, self.problem))


class ManifestError(SsambaError, ValueError):
    """A manifest that cannot be read; the message names the file and the line or entry."""


class CheckpointError(SsambaError, ValueError):
    """A checkpoint that cannot be loaded into the requested model; the message says why."""


class TrainingError(SsambaError, RuntimeError):
    """A run that cannot go on (diverged loss, inconsistent output folder); the message says why."""


class EvaluationError(SsambaError, ValueError):
    """Inputs that cannot give a correct metric (the message says why)."""


class RecipeError(SsambaError, ValueError):
    """An unknown task name or a malformed recipe file."""


class PrepareError(SsambaError, ValueError):
    """A dataset folder that does not have the expected layout (the message names the file)."""


class MissingSourceError(SsambaError, RuntimeError):
    """A system package, voice, soundfont or pip package the demo data needs is not installed."""

    def __init__(self, what: str, package: str, pip: bool = False):
        self.what = what
        self.package = package
        how = (
            f"pip install --no-deps {package}"
            if pip
            else f"sudo apt-get update && sudo apt-get install -y {package}"
        )
        super().__init__(
            f"{what} not found: install the {'pip' if pip else 'Debian'} package "
            f"{package!r} ({how})"
        )

    def __reduce__(self):
        return (type(self), (self.what, self.package, "pip install" in str(self)))


class ConfigError(SsambaError, ValueError):
    """A ``--config`` file that cannot be read, or names a setting the command does not have."""

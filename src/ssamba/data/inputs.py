"""What a path given as audio input is: the one place that recognises an input's form.

Every command that takes audio (``--train``, ``--valid``, ``--test``, ``--probe``, a
``MANIFEST`` or ``INPUT`` argument, ``--prepared``) asks :func:`input_form` what the user's
path is, and :func:`check_input` refuses, in one line naming the path, the form it is and what
the command takes instead, a form that the command cannot read (rather than misreading it: a
shard folder taken for a folder of audio with no files, a tar decoded as audio).

The forms (:attr:`InputForm.kind`):

- ``manifest``: a manifest file: CSV/TSV ``path,label[,split]``, SSAST JSON, or a list of paths;
- ``split``: ``PATH:SPLIT``, one split of a manifest with a ``split`` column (:func:`split_spec`);
- ``audio folder``: a folder of audio files (searched recursively), or a folder per class;
- ``data set folder``: a folder written by ``ssamba prepare`` or ``ssamba data`` (it holds
  ``prepare.json`` or ``build.json``), or one holding ``fold{k}_train``/``fold{k}_eval``
  manifests; read as a manifest it stands for its manifest of every split
  (:data:`WHOLE_SET_MANIFESTS`);
- ``shards``: WebDataset tar shards (``ssamba shard``): a shard folder, ``DIR/shard-{000..009}.tar``
  or one ``.tar``;
- ``audio file``: one audio file;
- ``missing``: nothing there (left to each reader, whose message names what it looked for).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ssamba.constants import AUDIO_EXTENSIONS
from ssamba.data.shardfiles import INDEX_NAME, is_shard_spec
from ssamba.errors import ManifestError

MANIFEST = "manifest"
SPLIT = "split"
AUDIO_FOLDER = "audio folder"
DATASET_FOLDER = "data set folder"
SHARDS = "shards"
AUDIO_FILE = "audio file"
MISSING = "missing"

#: Every form, in the order messages list them, with how a message names it.
FORM_NAMES = {
    MANIFEST: "a manifest (CSV, SSAST JSON or a list of paths)",
    SPLIT: "PATH:SPLIT (one split of a manifest)",
    AUDIO_FOLDER: "a folder of audio (or a folder per class)",
    DATASET_FOLDER: "a data set folder (`ssamba prepare`, `ssamba data`)",
    SHARDS: "WebDataset shards (`ssamba shard`)",
    AUDIO_FILE: "an audio file",
}

#: What each kind of reader takes. One data set, read by decoding each listed file: a manifest,
#: one split of one, or a folder of audio (evaluate, shard, dasl-build).
ONE_SET_INPUTS = frozenset({MANIFEST, SPLIT, AUDIO_FOLDER})
#: Those and a data set folder, whose splits serve the roles of a command that takes
#: --train/--valid/--test, or which is inspected whole (check-data, stats).
DECODED_INPUTS = ONE_SET_INPUTS | {DATASET_FOLDER}
#: Read by the training dataset, which also streams the clips of tar shards (pretrain and
#: finetune --train/--valid/--test).
STREAMED_INPUTS = DECODED_INPUTS | {SHARDS}

#: Markers of a data set folder: the report of ``ssamba prepare``, the build of ``ssamba data``.
DATASET_MARKERS = {"prepare.json": "ssamba prepare", "build.json": "ssamba data"}
#: The manifest of every split of a data set folder, in order of preference.
WHOLE_SET_MANIFESTS = ("all.csv", "manifest.csv", "manifest.txt", "train.csv")
_FOLD_FILE = re.compile(r"^fold\d+_(train|eval)\.(csv|json)$")
_MANIFEST_SUFFIXES = (".csv", ".tsv", ".json", ".txt")
_SPLIT_SUFFIX = re.compile(r"^(.+):([A-Za-z0-9_.-]+)$")


def split_spec(spec: str | os.PathLike) -> tuple[str, str | None]:
    """``"data.csv:valid"`` -> ``("data.csv", "valid")``. A path that exists as given (a colon
    in a file name) or has no ``:SPLIT`` suffix whose ``PATH`` exists is returned whole, with
    no split."""
    text = os.fspath(spec)
    if os.path.exists(os.path.expanduser(text)):
        return text, None
    match = _SPLIT_SUFFIX.match(text)
    if match and (os.path.exists(os.path.expanduser(match[1])) or is_shard_spec(match[1])):
        return match[1], match[2]
    return text, None


@dataclass(frozen=True)
class InputForm:
    """What the path ``spec`` names: its :attr:`kind` (one of :data:`FORM_NAMES` or
    ``missing``), the path without ``:SPLIT`` and the split."""

    spec: str
    kind: str
    path: Path
    split: str | None = None

    def describe(self) -> str:
        """The form in words, for a message: ``a folder of WebDataset shards``, ..."""
        if self.kind == MANIFEST:
            suffix = self.path.suffix.lower()
            if suffix in (".csv", ".tsv"):
                return "a CSV manifest"
            return "an SSAST JSON manifest" if suffix == ".json" else "a manifest file"
        if self.kind == SPLIT:
            return f"split {self.split!r} of a manifest (PATH:SPLIT)"
        if self.kind == AUDIO_FOLDER:
            return "a folder of audio"
        if self.kind == DATASET_FOLDER:
            made = next((by for m, by in DATASET_MARKERS.items() if (self.path / m).is_file()), "")
            names = ", ".join(p.name for p in manifests_in(self.path)[:6]) or "none"
            made = f" written by `{made}`" if made else ""
            return f"a data set folder{made} (manifests: {names})"
        if self.kind == SHARDS:
            what = "a folder of WebDataset shards" if self.path.is_dir() else "WebDataset shards"
            return f"{what} (`ssamba shard`)"
        if self.kind == AUDIO_FILE:
            return "an audio file"
        return "no such file or folder"

    def whole_set_manifest(self) -> Path:
        """The manifest of every split of a data set folder (:data:`WHOLE_SET_MANIFESTS`)."""
        for name in WHOLE_SET_MANIFESTS:
            if (self.path / name).is_file():
                return self.path / name
        raise ManifestError(
            f"{self.spec}: {self.describe()} has none of {', '.join(WHOLE_SET_MANIFESTS)}; "
            "pass one of its manifests"
        )


def input_form(spec: str | os.PathLike) -> InputForm:
    """What ``spec`` is (see the module docstring); looks at the file system, reads nothing
    but a folder's listing."""
    text = os.fspath(spec)
    path_text, split = split_spec(text)
    path = Path(path_text).expanduser()
    if split is not None:
        return InputForm(text, SPLIT, path, split)
    if is_shard_spec(path_text):
        return InputForm(text, SHARDS, path)
    if not path.exists():
        return InputForm(text, MISSING, path)
    if path.is_dir():
        return InputForm(text, DATASET_FOLDER if _is_dataset_folder(path) else AUDIO_FOLDER, path)
    if path.suffix.lower() in AUDIO_EXTENSIONS:
        return InputForm(text, AUDIO_FILE, path)
    return InputForm(text, MANIFEST, path)


def _is_dataset_folder(folder: Path) -> bool:
    if any((folder / marker).is_file() for marker in DATASET_MARKERS):
        return True
    if (folder / INDEX_NAME).is_file():
        return False
    return any(_FOLD_FILE.match(p.name) for p in folder.iterdir() if p.is_file())


def manifests_in(folder: Path) -> list[Path]:
    """The manifest files at the top of ``folder`` (by suffix), sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in _MANIFEST_SUFFIXES and p.name not in DATASET_MARKERS
    )


def describe_forms(kinds: Iterable[str]) -> str:
    """``a, b or c``: the forms ``kinds`` names, in :data:`FORM_NAMES` order."""
    names = [name for kind, name in FORM_NAMES.items() if kind in set(kinds)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


# What to pass instead of a form that is refused, where one thing is the obvious choice.
_INSTEAD = {
    DATASET_FOLDER: "; pass one of its manifests (PATH or PATH:SPLIT)",
    SHARDS: "; pass the manifest the shards were made from",
    AUDIO_FILE: "; pass its folder, or a manifest that lists it",
}


def check_input(spec: str | os.PathLike, accepted: Iterable[str], user: str) -> InputForm:
    """The form of ``spec`` when ``user`` (``ssamba probe --train``, say) takes it; else a
    ManifestError naming the path, its form and the forms ``user`` takes. A missing path is
    left to the reader (its message names what it looked for)."""
    form = input_form(spec)
    accepted = frozenset(accepted)
    if form.kind != MISSING and form.kind not in accepted:
        instead = _INSTEAD.get(form.kind, "")
        raise ManifestError(
            f"{form.spec} is {form.describe()}; {user} takes {describe_forms(accepted)}{instead}"
        )
    return form

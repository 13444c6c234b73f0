"""DASL data: long recordings concatenated from labelled clips, one label per second.

:func:`build_dasl_mixtures` concatenates clips of any single-label manifest (``ssamba prepare
urbansound8k`` folds, a folder per class, a CSV...) into long 16 kHz mono WAVs and writes a
manifest ``<name>.csv``::

    path,labels
    mixtures/mixtures_00000.wav,dog_bark;dog_bark;siren;siren;siren;...

``labels`` holds one class name per second of audio, in order, joined by ``;`` (so class names
must not contain ``;`` or ``,``). Paths are relative to the manifest. Next to it:
``<name>.sources.json`` (which clip, offset and length makes up each second) and
``class_labels_indices.csv`` (the class order, shared by every manifest built in the folder).

``mode="whole"`` (the reference's construction) appends whole clips in a shuffled order, each cut
to whole seconds (a clip shorter than 1 s is zero-padded to 1 s; the clip that reaches the end of
a recording is cut there); ``mode="crop"`` fills every second with a random 1-s crop of a random
clip (more label changes). The reference instead pads every clip with silence up to the next
whole second and labels that silence with the clip's class; we cut, so that no labelled second is
mostly silence (clips under 1 s excepted). The reference normalised with the mixtures' own
statistics (-5.1384, 4.2300): ``--normalize=-5.1384,4.2300`` or ``ssamba stats`` on your mixtures.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ssamba.audio import load_audio
from ssamba.configs import DaslBuildConfig
from ssamba.constants import CLASS_LABELS_FILE, SAMPLE_RATE
from ssamba.data import Manifest, read_class_list, read_manifest
from ssamba.errors import AudioError, ManifestError, UsageError
from ssamba.fileio import atomic_write_csv, atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class DaslBuildResult:
    manifest: Path
    sources: Path
    classes: list[str]
    recordings: int
    seconds: int
    label_counts: dict[str, int]


def class_list_for(path: Path) -> Path | None:
    """The ``class_labels_indices.csv`` next to a manifest (or in a folder), if any."""
    folder = path if path.is_dir() else path.parent
    found = folder / CLASS_LABELS_FILE
    return found if found.is_file() else None


def read_source_manifest(manifest, classes=None) -> Manifest:
    """A single-label manifest (any format ``read_manifest`` reads); the class order comes from
    ``classes``, else a ``class_labels_indices.csv`` next to it, else the sorted names."""
    if isinstance(manifest, Manifest):
        m = manifest
    else:
        path = Path(manifest)
        if classes is None:
            classes = class_list_for(path)
        m = read_manifest(path, classes=classes)
    if not m.labeled:
        raise ManifestError(f"{m.source}: DASL mixtures need a labelled manifest")
    bad = next((ex for ex in m.examples if len(ex.labels) != 1), None)
    if bad is not None:
        raise ManifestError(f"{m.source}: {bad.path} has {len(bad.labels)} labels (need one)")
    odd = [c for c in m.classes if ";" in c or "," in c]
    if odd:
        raise ManifestError(f"{m.source}: class name {odd[0]!r} contains ';' or ','")
    return m


_DEFAULT = DaslBuildConfig()


def build_dasl_mixtures(
    manifest,
    out: str | os.PathLike,
    n_recordings: int,
    seconds: int = _DEFAULT.seconds,
    seed: int = _DEFAULT.seed,
    *,
    mode: str = _DEFAULT.mode,
    name: str = _DEFAULT.name,
    classes=None,
    on_bad_file: str = _DEFAULT.on_bad_file,
) -> DaslBuildResult:
    """Write ``n_recordings`` recordings of ``seconds`` s concatenated from labelled clips.

    See the module docstring for the output layout and the two modes. ``manifest``: a
    single-label manifest path (or :class:`~ssamba.data.Manifest`); ``classes``: the class order
    (default: ``class_labels_indices.csv`` next to the manifest, else sorted names). Build the
    training mixtures from training clips and the evaluation mixtures from held-out clips (e.g. the
    ``fold{k}_train`` / ``fold{k}_eval`` manifests of ``ssamba prepare urbansound8k``).
    """
    DaslBuildConfig(seconds, mode, name, seed, on_bad_file)  # checks the values
    if n_recordings < 1:
        raise UsageError(f"need n_recordings >= 1, got {n_recordings}")
    seconds = int(seconds)
    src = read_source_manifest(manifest, classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    class_file = out / CLASS_LABELS_FILE
    if class_file.exists() and read_class_list(class_file)[0] != list(src.classes):
        raise ManifestError(
            f"{class_file} lists other classes than {src.source}: build into another folder "
            "or pass the same class list"
        )
    (out / name).mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = _Clips(src, rng, on_bad_file)
    rows, sources, counts = [], [], {}
    for r in range(n_recordings):
        audio, labels, segments = _recording(clips, seconds, mode, rng)
        rel = f"{name}/{name}_{r:05d}.wav"
        sf.write(str(out / rel), audio, SAMPLE_RATE, subtype="PCM_16")
        rows.append((rel, ";".join(labels)))
        sources.append({"path": rel, "segments": segments})
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    manifest_path = atomic_write_csv(out / f"{name}.csv", ["path", "labels"], rows)
    sources_path = atomic_write_json(
        out / f"{name}.sources.json",
        {"source": str(src.source), "mode": mode, "seed": seed, "recordings": sources},
        indent=1,
    )
    if not class_file.exists():
        names = [(i, c, src.display_names.get(c, c)) for i, c in enumerate(src.classes)]
        atomic_write_csv(class_file, ["index", "mid", "display_name"], names)
    return DaslBuildResult(
        manifest_path, sources_path, list(src.classes), n_recordings, seconds, counts
    )


class _Clips:
    """The source clips in shuffled rounds (a new permutation whenever one is used up), bad files
    skipped or fatal as ``on_bad_file`` says."""

    def __init__(self, src: Manifest, rng: np.random.Generator, on_bad_file: str):
        self.src, self.rng, self.on_bad_file = src, rng, on_bad_file
        self.order: list[int] = []
        self.bad: set[int] = set()

    def label(self, k: int) -> str:
        return self.src.examples[k].labels[0]

    def path(self, k: int) -> Path:
        return self.src.examples[k].path

    def _load(self, k: int) -> np.ndarray | None:
        try:
            return load_audio(self.path(k), SAMPLE_RATE).numpy()
        except AudioError as e:
            if self.on_bad_file == "error":
                raise
            if k not in self.bad:
                log.warning("skipping bad audio file %s", e)
            self.bad.add(k)
            return None

    def next(self) -> tuple[int, np.ndarray]:
        """The next usable clip: its index and samples."""
        for _ in range(len(self.src) + 1):
            if not self.order:
                self.order.extend(self.rng.permutation(len(self.src)).tolist())
            k = self.order.pop()
            if k in self.bad:
                continue
            wave = self._load(k)
            if wave is not None:
                return k, wave
        raise ManifestError(f"{self.src.source}: no usable audio file")


def _recording(clips: _Clips, seconds: int, mode: str, rng: np.random.Generator):
    """One recording: (float32 samples, a label per second, the segments it is made of)."""
    one = SAMPLE_RATE
    pieces, labels, segments = [], [], []
    while len(labels) < seconds:
        k, wave = clips.next()
        if mode == "whole":
            n_sec = min(max(1, wave.size // one), seconds - len(labels))
            offset = 0
        else:
            n_sec = 1
            offset = int(rng.integers(0, max(0, wave.size - one) + 1))
        piece = wave[offset : offset + n_sec * one]
        pieces.append(np.pad(piece, (0, n_sec * one - piece.size)))
        segments.append(
            {
                "start": len(labels),
                "seconds": n_sec,
                "path": str(clips.path(k)),
                "offset": offset / SAMPLE_RATE,
                "label": clips.label(k),
            }
        )
        labels.extend([clips.label(k)] * n_sec)
    audio = np.clip(np.concatenate(pieces), -1.0, 1.0).astype(np.float32)
    return audio, labels, segments

"""Reading DASL data: manifests with one label per second, and the dataset of whole recordings."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ssamba import audio
from ssamba.constants import FRAMES_PER_SECOND, SAMPLE_RATE
from ssamba.dasl.head import chunk_labels
from ssamba.dasl.mixtures import class_list_for
from ssamba.data import item_generator, read_manifest, split_spec
from ssamba.errors import ManifestError, UsageError


def read_dasl_manifest(path, classes=None) -> tuple[list[tuple[Path, list[str]]], list[str]]:
    """``[(audio path, per-second labels)]`` and the class list of a DASL manifest.

    Any manifest format whose label cell lists one label per second (``;``-separated, in order)
    works. Classes: ``classes`` (a list or a ``class_labels_indices.csv``), else the
    ``class_labels_indices.csv`` next to the manifest, else the sorted label names.
    """
    if classes is None:
        classes = class_list_for(Path(split_spec(path)[0]))  # PATH or PATH:SPLIT
    m = read_manifest(path, classes=classes, multilabel=True, label_sequences=True)
    if not m.labeled:
        raise ManifestError(f"{path}: a DASL manifest needs per-second labels")
    return [(ex.path, list(ex.labels)) for ex in m.examples], list(m.classes)


class DaslDataset(Dataset):
    """Whole recordings and their per-chunk labels.

    Item ``i``: ``{"fbank": (seconds * 100, 128) float32, "labels": (n_chunks,) long,
    "index": i}``. Every recording is padded (zeros) or cut to ``seconds`` (default: the longest
    in the manifest, in labelled seconds); chunks past a recording's labels get label -100
    (ignored). Training items get SpecAugment (``freqm``, ``timem``) drawn from
    :func:`~ssamba.data.item_generator` ``(seed, epoch, index)``.
    """

    def __init__(
        self,
        manifest,
        classes=None,
        *,
        chunk_seconds: float = 1.0,
        seconds: int | None = None,
        normalize=None,
        train: bool = False,
        freqm: int = 0,
        timem: int = 0,
        seed: int = 0,
    ) -> None:
        self.items, self.classes = read_dasl_manifest(manifest, classes)
        self.index = {c: k for k, c in enumerate(self.classes)}
        longest = max(len(labels) for _, labels in self.items)
        self.seconds = int(seconds or longest)
        if chunk_seconds <= 0 or chunk_seconds > self.seconds:
            raise UsageError(f"chunk_seconds must be in (0, {self.seconds}], got {chunk_seconds}")
        self.chunk_seconds = float(chunk_seconds)
        self.n_chunks = max(1, round(self.seconds / self.chunk_seconds))
        self.frames = self.seconds * FRAMES_PER_SECOND
        self.stats = audio.normalize_stats(normalize)
        self.train, self.freqm, self.timem = train, freqm, timem
        self.seed, self.epoch = int(seed), 0
        self.source = str(manifest)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def labels(self, i: int) -> torch.Tensor:
        second = [self.index[c] for c in self.items[i][1]]
        return chunk_labels(second, self.n_chunks, self.chunk_seconds)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        wave = audio.load_audio(self.items[i][0], SAMPLE_RATE)
        n = self.seconds * SAMPLE_RATE
        wave = wave[:n] if wave.numel() >= n else F.pad(wave, (0, n - wave.numel()))
        fb = audio.fbank(wave, target_length=self.frames)
        if self.train and (self.freqm or self.timem):
            g = item_generator(self.seed, self.epoch, i)
            fb = audio.spec_augment(fb, self.freqm, self.timem, generator=g)
        if self.stats is not None:
            fb = audio.normalize_fbank(fb, *self.stats)
        return {"fbank": fb.float().contiguous(), "labels": self.labels(i), "index": i}

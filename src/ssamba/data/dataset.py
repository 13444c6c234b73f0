"""The training and evaluation dataset: audio file -> (augmented, normalised) fbank and target.

:class:`AudioDataset` yields dicts ``{"fbank": (T, 128) float32, "index": int, "skipped": int}``
plus ``"target": (C,) float32`` for labeled manifests; all of its randomness comes from a generator
seeded by ``(seed, epoch, index)`` (:func:`item_generator`), so items do not depend on the worker
count or access order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ssamba import audio
from ssamba.constants import NUM_MEL_BINS, PATCH, SAMPLE_RATE
from ssamba.data.checks import check_bad_file_policy, check_length
from ssamba.data.manifest import Manifest, read_manifest
from ssamba.errors import AudioError, ManifestError, UsageError

log = logging.getLogger(__name__)


def item_generator(seed: int, epoch: int, index: int, *salt: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, epoch, index, *salt)`` (all non-negative ints)."""
    entropy = [len(salt), int(seed), int(epoch), int(index), *map(int, salt)]
    words = np.random.SeedSequence(entropy)
    state = words.generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


def _uniform(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


class AudioDataset(Dataset):
    """Fbank features (and targets) for training or evaluation.

    Item ``i`` is a dict: ``"fbank"`` (T, 128) float32 normalised features, ``"index"`` (``i``),
    ``"skipped"`` (bad files skipped to produce this item; 0 normally) and, when the manifest is
    labeled, ``"target"`` (C,) float32 (one/multi-hot; mixed by mixup).

    Per item: load_audio -> mixup (train, probability ``mixup``: lambda ~ Beta(10, 10) with another
    random example, both waveforms mean-removed, the second zero-padded/cut to the first's length,
    targets mixed alike) -> fbank padded/cut to ``target_length`` -> SpecAugment (train, ``freqm``,
    ``timem``) -> normalise -> (train and ``noise``) ``fb + U(0,1) * r / 10``, r ~ U(0,1), then a
    time roll by an integer in [-10, 10). With ``train=False`` no augmentation is applied.

    All randomness comes from :func:`item_generator` ``(seed, epoch, index)``: call
    :meth:`set_epoch` before each epoch (before creating the loader's iterator).

    ``on_bad_file="skip"`` replaces an undecodable/empty/non-finite/too-short file by another
    example chosen deterministically, warns once per bad file (per process), and counts:
    ``item["skipped"]`` (sum it over batches: works with workers) and ``self.skipped`` (this
    process only). ``"error"`` (default) raises AudioError naming the file. With
    ``substitute=False`` (the default for ``train=False``: validation and evaluation) a bad file
    is not replaced: its item is a placeholder of zeros with ``item["bad"]`` True (every item of
    such a dataset has ``"bad"``: ``flags_bad``), which metrics must leave out (a stand-in clip
    would count another file's prediction as this one's).
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        target_length: int | None = 1024,
        normalize=None,
        *,
        train: bool = False,
        freqm: int = 0,
        timem: int = 0,
        mixup: float = 0.0,
        noise: bool = False,
        seed: int = 0,
        on_bad_file: str = "error",
        sample_rate: int = SAMPLE_RATE,
        max_substitutions: int = 100,
        substitute: bool | None = None,
    ) -> None:
        check_bad_file_policy(on_bad_file)
        if not 0.0 <= mixup <= 1.0:
            raise UsageError(f"mixup must be a probability in [0, 1], got {mixup}")
        if freqm < 0 or timem < 0:
            raise UsageError("freqm and timem must be >= 0")
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        if len(self.manifest) == 0:
            raise ManifestError(f"{self.manifest.source}: empty manifest")
        self.target_length = target_length
        self.stats = audio.normalize_stats(normalize)
        self.train = train
        self.freqm, self.timem, self.mixup, self.noise = freqm, timem, mixup, noise
        self.seed = int(seed)
        self.epoch = 0
        self.on_bad_file = on_bad_file
        self.sample_rate = sample_rate
        self.max_substitutions = max_substitutions
        self.substitute = train if substitute is None else bool(substitute)
        self._num_files = len({ex.path for ex in self.manifest.examples})
        # items carry "bad" when a bad file yields a placeholder (skip mode, no substitution)
        self.flags_bad = on_bad_file == "skip" and not self.substitute
        self.skipped = 0
        self.bad_files: dict[Path, str] = {}

    def __len__(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def labeled(self) -> bool:
        return self.manifest.labeled

    # -- loading with the bad-file policy
    def _load(self, i: int, salt: int) -> tuple[int, torch.Tensor, int]:
        """Waveform of example ``i`` or, under the skip policy, of a deterministic substitute.

        Returns (index actually used, waveform, number of bad files skipped)."""
        skipped = 0
        for attempt in range(self.max_substitutions + 1):
            path = self.manifest.examples[i].path
            if path not in self.bad_files:
                try:
                    wave = audio.load_audio(path, sample_rate=self.sample_rate)
                    check_length(path, wave)
                    return i, wave, skipped
                except AudioError as e:
                    if self.on_bad_file == "error":
                        raise
                    self.bad_files[path] = e.problem
                    what = "a substitute is used" if self.substitute else "left out of metrics"
                    log.warning("skipping bad audio file %s (%s)", e, what)
            elif self.on_bad_file == "error":  # pragma: no cover - cache only filled when skipping
                raise AudioError(path, self.bad_files[path])
            skipped += 1
            self.skipped += 1
            if not self.substitute:
                return i, None, skipped
            if len(self.bad_files) >= self._num_files:
                raise ManifestError(
                    f"{self.manifest.source}: every one of its {self._num_files} audio files is "
                    "bad: nothing to substitute (check the data with `ssamba check-data`)"
                )
            if len(self.manifest) < 2:
                break
            g = item_generator(self.seed, self.epoch, i, 1000 + salt, attempt)
            j = int(torch.randint(len(self.manifest) - 1, (), generator=g))
            i = j + 1 if j >= i else j  # any other example
        raise ManifestError(
            f"{skipped} bad audio file(s) in a row while skipping ({len(self.bad_files)} known "
            f"bad of {len(self.manifest)}): check the data with `ssamba check-data`"
        )

    def _target(self, i: int) -> torch.Tensor | None:
        return self.manifest.targets(i) if self.labeled else None

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        g = item_generator(self.seed, self.epoch, index)
        i, wave, skipped = self._load(index, 0)
        if wave is None:
            return self._placeholder(index, skipped)
        target = self._target(i)
        if self.train and self.mixup > 0 and _uniform(g) < self.mixup:
            wave, target, skipped2 = self._mix(g, wave, target)
            skipped += skipped2
        fb = audio.fbank(wave, target_length=self.target_length, sample_rate=self.sample_rate)
        fb = self._augment_and_normalise(fb, g)
        item = {"fbank": fb.to(torch.float32).contiguous(), "index": index, "skipped": skipped}
        if target is not None:
            item["target"] = target.to(torch.float32)
        if self.flags_bad:
            item["bad"] = False
        return item

    def _placeholder(self, index: int, skipped: int) -> dict:
        """The item of a bad file that is not substituted: zeros, flagged ``"bad"``."""
        frames = self.target_length or PATCH
        item = {
            "fbank": torch.zeros(frames, NUM_MEL_BINS, dtype=torch.float32),
            "index": index,
            "skipped": skipped,
            "bad": True,
        }
        if self.labeled:
            item["target"] = self.manifest.targets(index)
        return item

    def _mix(
        self, g: torch.Generator, wave: torch.Tensor, target: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Mixup with another random example: (mixed waveform, mixed target, files skipped).

        lambda ~ Beta(10, 10); both waveforms mean-removed, the second zero-padded/cut to the
        first's length."""
        j = int(torch.randint(len(self.manifest), (), generator=g))
        lam = _beta(g, 10.0, 10.0)
        j, wave2, skipped = self._load(j, 1)
        if wave2 is None:  # a bad partner that is not substituted: no mixing
            return wave, target, skipped
        w1 = wave - wave.mean()
        w2 = wave2 - wave2.mean()
        w2 = _pad_or_cut_1d(w2, w1.numel())
        wave = lam * w1 + (1.0 - lam) * w2
        if target is not None:
            target = lam * target + (1.0 - lam) * self._target(j)
        return wave, target, skipped

    def _augment_and_normalise(self, fb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """SpecAugment (train), normalisation, then noise and a time roll (train and ``noise``)."""
        if self.train and (self.freqm > 0 or self.timem > 0):
            fb = audio.spec_augment(fb, self.freqm, self.timem, generator=g)
        if self.stats is not None:
            fb = audio.normalize_fbank(fb, *self.stats)
        if self.train and self.noise:
            r = _uniform(g)
            fb = fb + torch.rand(fb.shape, generator=g) * r / 10
            shift = int(torch.randint(-10, 10, (), generator=g))
            fb = torch.roll(fb, shift, 0)
        return fb


def drop_bad(batch: dict) -> dict | None:
    """A collated batch without the items of bad files (``batch["bad"]``, set by an
    :class:`AudioDataset` that does not substitute them); None when nothing is left."""
    bad = batch.get("bad")
    if bad is None:
        return batch
    keep = ~torch.as_tensor(bad, dtype=torch.bool)
    if not bool(keep.any()):
        return None
    n = keep.shape[0]
    return {
        k: v[keep] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n else v
        for k, v in batch.items()
        if k != "bad"
    }


def _beta(g: torch.Generator, a: float, b: float) -> float:
    """Beta(a, b) driven by ``g`` (torch's Beta sampler takes no generator)."""
    rng = np.random.default_rng(int(torch.randint(2**62, (), generator=g)))
    return float(rng.beta(a, b))


def _pad_or_cut_1d(w: torch.Tensor, n: int) -> torch.Tensor:
    if w.numel() >= n:
        return w[:n]
    return torch.nn.functional.pad(w, (0, n - w.numel()))

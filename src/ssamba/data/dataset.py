"""The training and evaluation dataset: audio file -> (augmented, normalised) fbank and target.

:class:`AudioDataset` yields dicts ``{"fbank": (T, 128) float32, "index": int, "skipped": int}``
plus ``"target": (C,) float32`` for labeled manifests; all of its randomness comes from a generator
seeded by ``(seed, epoch, index)`` (:func:`item_generator`), so items do not depend on the worker
count or access order.
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from ssamba import audio
from ssamba.constants import FRAME_LENGTH_MS, FRAME_SHIFT_MS, NUM_MEL_BINS, PATCH, SAMPLE_RATE
from ssamba.data.checks import check_bad_file_policy, check_length
from ssamba.data.manifest import Example, Manifest, read_manifest
from ssamba.errors import AudioError, ManifestError, UsageError

log = logging.getLogger(__name__)

WINDOWS = ("random", "start")
# extra 16 kHz samples read around a window that is resampled, so that the resampler's edge
# (its filter's delay) does not eat into the frames that are kept
RESAMPLE_MARGIN = 64


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

    A file longer than ``target_length`` frames is read only in part (soundfile ``start`` and
    ``frames``, at the file's native rate, then resampled): ``window="random"`` (default when
    ``train``) a window at a random start drawn per ``(seed, epoch, index)``, so each epoch sees
    another part of a long recording; ``"start"`` (default otherwise: validation, evaluation)
    its beginning, always the same.
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
        window: str | None = None,
    ) -> None:
        check_bad_file_policy(on_bad_file)
        window = window or ("random" if train else "start")
        if window not in WINDOWS:
            raise UsageError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
        self.window = window
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
        self._num_files = len({_file_key(ex) for ex in self.manifest.examples})
        # items carry "bad" when a bad file yields a placeholder (skip mode, no substitution)
        self.flags_bad = on_bad_file == "skip" and not self.substitute
        self.skipped = 0
        self.bad_files: dict[Path | tuple, str] = {}

    def __len__(self) -> int:
        return len(self.manifest)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def labeled(self) -> bool:
        return self.manifest.labeled

    # -- loading with the bad-file policy
    def _load(self, i: int, salt: int, data: bytes | None = None) -> tuple[int, torch.Tensor, int]:
        """Waveform of example ``i`` or, under the skip policy, of a deterministic substitute.
        ``data``: example ``i``'s audio bytes when a shard reader has them already.

        Returns (index actually used, waveform, number of bad files skipped)."""
        skipped = 0
        for attempt in range(self.max_substitutions + 1):
            example = self.manifest.examples[i]
            path, key = example.path, _file_key(example)
            if key not in self.bad_files:
                try:
                    wave = self.read_wave(example, i, salt, data)
                    check_length(path, wave)
                    return i, wave, skipped
                except AudioError as e:
                    if self.on_bad_file == "error":
                        raise
                    self.bad_files[key] = e.problem
                    what = "a substitute is used" if self.substitute else "left out of metrics"
                    log.warning("skipping bad audio file %s (%s)", e, what)
            elif self.on_bad_file == "error":  # pragma: no cover - cache only filled when skipping
                raise AudioError(path, self.bad_files[key])
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
            data = None
        raise ManifestError(
            f"{skipped} bad audio file(s) in a row while skipping ({len(self.bad_files)} known "
            f"bad of {len(self.manifest)}): check the data with `ssamba check-data`"
        )

    def _target(self, i: int) -> torch.Tensor | None:
        return self.manifest.targets(i) if self.labeled else None

    def read_wave(self, example: Example, i: int, salt: int, data: bytes | None = None):
        """The waveform of one example: its window (see the class) at ``sample_rate``."""
        g = item_generator(self.seed, self.epoch, i, 2000 + salt)
        return read_window(example, self.target_length, self.sample_rate, self.window, g, data)

    def __getitem__(self, index: int) -> dict:
        return self.get(index)

    def get(self, index: int, data: bytes | None = None) -> dict:
        """Item ``index``; ``data``: its audio bytes when already read (streaming from shards)."""
        index = int(index)
        if index < 0:
            index += len(self)
        g = item_generator(self.seed, self.epoch, index)
        i, wave, skipped = self._load(index, 0, data)
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


def _file_key(example: Example):
    return example.path if example.offset is None else (example.path, example.offset)


def window_samples(target_length: int, sample_rate: int = SAMPLE_RATE) -> int:
    """Samples that make exactly ``target_length`` Kaldi frames (25 ms every 10 ms)."""
    shift = round(sample_rate * FRAME_SHIFT_MS / 1000)
    length = round(sample_rate * FRAME_LENGTH_MS / 1000)
    return (target_length - 1) * shift + length


def member_bytes(example: Example) -> bytes:
    """The audio bytes of a clip inside a tar shard."""
    try:
        with open(example.path, "rb") as f:
            f.seek(example.offset)
            data = f.read(example.size)
    except OSError as e:
        raise AudioError(example.path, f"cannot read the shard ({e})") from None
    if len(data) != example.size:
        raise AudioError(example.path, f"truncated shard at byte {example.offset}")
    return data


def read_window(
    example: Example,
    target_length: int | None,
    sample_rate: int = SAMPLE_RATE,
    window: str = "start",
    generator: torch.Generator | None = None,
    data: bytes | None = None,
) -> torch.Tensor:
    """Mono float32 at ``sample_rate``: the whole clip when it is no longer than
    ``target_length`` frames, else only a window of that length, read from disk alone: at the
    file's start (``"start"``) or at a start drawn from ``generator`` (``"random"``)."""
    if example.offset is not None and data is None:
        data = member_bytes(example)
    source = example.path if data is None else None
    if target_length is None:
        return _decode_all(example.path, source, data, sample_rate)
    try:
        info = sf.info(str(source) if source is not None else io.BytesIO(data))
    except Exception:  # not a libsndfile format (m4a, ...): whole-file decoding via ffmpeg
        return _decode_all(example.path, source, data, sample_rate)
    if source is not None:
        _check_complete(example.path, int(info.frames), int(info.samplerate))
    rate = int(info.samplerate)
    need = window_samples(target_length, sample_rate)
    if rate != sample_rate:
        need = math.ceil((need + RESAMPLE_MARGIN) * rate / sample_rate)
    if info.frames <= need:
        return _decode_all(example.path, source, data, sample_rate)
    start = 0
    if window == "random":
        start = int(torch.randint(info.frames - need + 1, (), generator=generator))
    target = str(source) if source is not None else io.BytesIO(data)
    try:
        part, _ = sf.read(target, start=start, frames=need, dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises several types; all mean "cannot decode"
        raise AudioError(example.path, f"cannot decode ({e})") from None
    return _to_mono(example.path, part, rate, sample_rate)


def _check_complete(path: Path, frames: int, rate: int) -> None:
    """A file whose data ends before its header says is damaged, windowed or not (the rule of
    :func:`audio.load_audio`: libsndfile trims the frame count of a short WAV silently)."""
    declared = audio.declared_frames(path)
    if declared is not None and frames < declared - max(1, declared // 1000):
        raise AudioError(
            path,
            f"truncated: the header declares {declared / rate:.3f} s, the data holds "
            f"{frames / rate:.3f} s",
        )


def _decode_all(path: Path, source: Path | None, data: bytes | None, sample_rate: int):
    if source is not None:
        return audio.load_audio(source, sample_rate=sample_rate)
    try:
        part, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as e:
        raise AudioError(path, f"cannot decode ({e})") from None
    return _to_mono(path, part, rate, sample_rate)


def _to_mono(path: Path, part: np.ndarray, rate: int, sample_rate: int) -> torch.Tensor:
    """Channels averaged, checked and resampled, as :func:`audio.load_audio` does."""
    if part.shape[0] == 0:
        raise AudioError(path, "the file contains no audio samples")
    wave = part.mean(axis=1, dtype=np.float32) if part.shape[1] > 1 else part[:, 0]
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise AudioError(path, f"{bad} of {wave.size} samples are NaN or infinite")
    if rate != sample_rate:
        return audio.resample(wave, int(rate), int(sample_rate))
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


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

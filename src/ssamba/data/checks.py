"""Data checks and dataset statistics: every file of a manifest decoded once.

:func:`check_data` lists the problems of a data set (a :class:`DataReport`); :func:`compute_stats`
gives the fbank mean and std that ``normalize`` expects. Both decode the files in order, in the
main process or in worker processes (:func:`map_files`), with the same result either way.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import soundfile
import torch
from torch.utils.data import DataLoader, Dataset

from ssamba import audio
from ssamba.constants import BAD_FILE_POLICIES, NUM_MEL_BINS, PATCH, SAMPLE_RATE
from ssamba.data.manifest import Manifest, read_manifest
from ssamba.errors import AudioError, ManifestError, UsageError

log = logging.getLogger(__name__)


def check_bad_file_policy(on_bad_file: str) -> None:
    if on_bad_file not in BAD_FILE_POLICIES:
        raise UsageError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, got {on_bad_file!r}")


def check_length(path: Path, wave: torch.Tensor) -> None:
    """Raise :class:`AudioError` when ``wave`` is too short to make one fbank frame."""
    if audio.num_frames(wave.numel()) < 1:
        raise AudioError(path, f"too short ({wave.numel()} samples) to make one fbank frame")


# --------------------------------------------------------------------------------------------------
# Checking data


@dataclass
class DataReport:
    """The result of :func:`check_data`. ``problems`` lists ``(path, problem)``; files at another
    sample rate are listed in ``resampled`` as ``(path, native_rate)`` and are not problems."""

    source: str | None
    sample_rate: int
    num_files: int = 0
    problems: list[tuple[Path, str]] = field(default_factory=list)
    resampled: list[tuple[Path, int]] = field(default_factory=list)
    sample_rates: dict[int, int] = field(default_factory=dict)
    total_seconds: float = 0.0
    min_seconds: float | None = None
    max_seconds: float | None = None
    num_classes: int = 0
    multilabel: bool = False

    @property
    def num_problems(self) -> int:
        return len(self.problems)

    @property
    def num_ok(self) -> int:
        return self.num_files - len({p for p, _ in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, max_listed: int = 50) -> str:
        lines = [f"manifest: {self.source}"] if self.source else []
        kind = (
            f"{self.num_classes} classes ({'multi-label' if self.multilabel else 'single-label'})"
            if self.num_classes
            else "unlabeled"
        )
        lines.append(
            f"files: {self.num_files} ({kind}); ok: {self.num_ok}; "
            f"with problems: {len({p for p, _ in self.problems})}"
        )
        if self.num_ok:
            lines.append(
                f"duration: {_hours(self.total_seconds)} in all, "
                f"{self.min_seconds:.2f} s to {self.max_seconds:.2f} s per file"
            )
        if self.sample_rates:
            rates = ", ".join(f"{r} Hz: {n}" for r, n in sorted(self.sample_rates.items()))
            lines.append(f"native sample rates: {rates}")
        if self.resampled:
            lines.append(
                f"{len(self.resampled)} file(s) will be resampled to {self.sample_rate} Hz"
            )
        if self.problems:
            lines.append("problems:")
            for p, problem in self.problems[:max_listed]:
                lines.append(f"  {p}: {problem}")
            if len(self.problems) > max_listed:
                lines.append(f"  ... and {len(self.problems) - max_listed} more")
        else:
            lines.append("no problems found")
        return "\n".join(lines)

    __str__ = summary

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "sample_rate": self.sample_rate,
            "num_files": self.num_files,
            "num_ok": self.num_ok,
            "num_problems": self.num_problems,
            "problems": [{"path": str(p), "problem": s} for p, s in self.problems],
            "resampled": [{"path": str(p), "native_rate": r} for p, r in self.resampled],
            "sample_rates": {str(k): v for k, v in sorted(self.sample_rates.items())},
            "total_seconds": self.total_seconds,
            "min_seconds": self.min_seconds,
            "max_seconds": self.max_seconds,
            "num_classes": self.num_classes,
            "multilabel": self.multilabel,
        }


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _native_rate(path: Path) -> int | None:
    try:
        return int(soundfile.info(str(path)).samplerate)
    except Exception:  # formats libsndfile lacks are decoded by load_audio; rate unknown here
        return None


def check_data(
    manifest: Manifest | str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float | None = None,
    progress: bool = True,
    num_workers: int = 0,
) -> DataReport:
    """Decode every file of ``manifest`` and report problems.

    Problems: missing file, undecodable, empty, NaN/inf samples, data shorter than the file's
    header says (a truncated file), shorter than one 16-frame patch (or than ``min_seconds``),
    listed more than once, unknown or missing label. Files whose native rate is not
    ``sample_rate`` are listed in ``report.resampled`` (not a problem). ``num_workers`` > 0 decodes
    in that many processes (same report).
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    if not (isinstance(sample_rate, int) and sample_rate > 0):
        raise UsageError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    report = DataReport(
        source=str(manifest.source) if manifest.source else None,
        sample_rate=sample_rate,
        num_files=len(manifest),
        num_classes=manifest.num_classes,
        multilabel=manifest.multilabel,
    )
    known = set(manifest.classes)
    durations = []
    rates: Counter[int] = Counter()
    results = map_files(
        _inspect_file, manifest.paths(), (sample_rate,), num_workers, progress, "check-data"
    )
    for ex, (num_samples, native, problem) in zip(manifest.examples, results, strict=True):
        if manifest.labeled:
            report.problems += _label_problems(ex.path, ex.labels, known)
        if problem is not None:
            report.problems.append((ex.path, problem))
            continue
        if native is not None:
            rates[native] += 1
            if native != sample_rate:
                report.resampled.append((ex.path, native))
        seconds = num_samples / sample_rate
        if min_seconds is not None and seconds < min_seconds:
            report.problems.append(
                (ex.path, f"too short: {seconds:.3f} s (minimum {min_seconds:g} s)")
            )
            continue
        durations.append(seconds)
    report.problems += duplicate_problems(manifest)
    report.sample_rates = dict(rates)
    if durations:
        report.total_seconds = float(sum(durations))
        report.min_seconds = float(min(durations))
        report.max_seconds = float(max(durations))
    return report


def duplicate_problems(manifest: Manifest) -> list[tuple[Path, str]]:
    """One problem per file listed more than once (it would count twice in an evaluation); the
    clips of a tar shard are told apart by their offset."""
    counts = Counter((ex.path, ex.offset) for ex in manifest.examples)
    return [(p, f"listed {n} times in the manifest") for (p, _), n in counts.items() if n > 1]


def _label_problems(path: Path, labels: Sequence[str], known: set[str]) -> list[tuple[Path, str]]:
    if not labels:
        return [(path, "no label")]
    return [(path, f"unknown label {name!r}") for name in labels if name not in known]


def _inspect_file(path: Path, sample_rate: int) -> tuple[int, int | None, str | None]:
    """(samples after resampling, native rate or None, problem or None) of one file."""
    if not path.is_file():
        return 0, None, "file not found"
    try:
        wave = audio.load_audio(path, sample_rate=sample_rate)
    except AudioError as e:
        return 0, None, e.problem
    except Exception as e:  # anything load_audio did not anticipate is still a problem
        return 0, None, f"cannot load ({type(e).__name__}: {e})"
    n = wave.numel()
    native = _native_rate(path)
    declared = audio.declared_frames(path)
    if declared is not None and native:
        expected = declared * sample_rate / native
        if n < expected - max(1.0, 0.001 * expected):
            return (
                n,
                native,
                (
                    f"truncated: the header declares {declared / native:.3f} s, the data holds "
                    f"{n / sample_rate:.3f} s"
                ),
            )
    frames = audio.num_frames(n, sample_rate)
    if frames < PATCH:
        return (
            n,
            native,
            (
                f"too short: {n / sample_rate:.3f} s makes {frames} fbank frame(s), less than one "
                f"{PATCH}-frame patch (training would see padding)"
            ),
        )
    return n, native, None


# --------------------------------------------------------------------------------------------------
# Dataset statistics


def compute_stats(
    manifest: Manifest | str | os.PathLike,
    target_length: int | None = None,
    progress: bool = True,
    on_bad_file: str = "error",
    sample_rate: int = SAMPLE_RATE,
    num_workers: int = 0,
) -> dict:
    """Mean and std of the unnormalised fbank over all values (all frames x 128 bins) of a dataset.

    Exact and streaming: per-file sums and sums of squares in float64. With ``target_length`` every
    fbank is first padded (zeros) or cut to that many frames, as the training data loader does (the
    SSAST convention: the stats describe what the model sees). Returns
    ``{"mean", "std", "files", "frames", "skipped"}`` (population std). ``on_bad_file="skip"``
    leaves out (and logs) files that cannot be decoded; ``"error"`` raises AudioError.
    """
    check_bad_file_policy(on_bad_file)
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest, ignore_labels=True)
    total = total_sq = 0.0
    frames = files = skipped = 0
    results = map_files(
        _file_sums, manifest.paths(), (target_length, sample_rate), num_workers, progress, "stats"
    )
    for path, result in zip(manifest.paths(), results, strict=True):
        if isinstance(result, str):
            if on_bad_file == "error":
                raise AudioError(path, result)
            log.warning("skipping %s: %s", path, result)
            skipped += 1
            continue
        s, sq, t = result
        total += s
        total_sq += sq
        frames += t
        files += 1
    if files == 0:
        raise ManifestError(f"{manifest.source}: no usable audio file to compute statistics")
    n = frames * NUM_MEL_BINS
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0)
    if not math.sqrt(var) > 1e-6 * max(1.0, abs(mean)):
        raise ManifestError(
            f"{manifest.source}: the fbank values of all {files} file(s) are constant "
            f"({mean:g}): std 0 cannot normalise (silent audio?)"
        )
    return {
        "mean": mean,
        "std": math.sqrt(var),
        "files": files,
        "frames": frames,
        "skipped": skipped,
    }


def _file_sums(
    path: Path, target_length: int | None, sample_rate: int
) -> tuple[float, float, int] | str:
    """(sum, sum of squares, frames) of one file's fbank in float64, or the problem."""
    try:
        wave = audio.load_audio(path, sample_rate=sample_rate)
        check_length(path, wave)
    except AudioError as e:
        return e.problem
    fb = audio.fbank(wave, target_length=target_length, sample_rate=sample_rate).double()
    return float(fb.sum()), float((fb * fb).sum()), int(fb.shape[0])


# --------------------------------------------------------------------------------------------------
# Mapping a function over files


class _FileMap(Dataset):
    def __init__(self, fn, paths, args):
        self.fn, self.paths, self.args = fn, paths, args

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        return self.fn(self.paths[k], *self.args)


def _identity(x):
    return x


def map_files(
    fn: Callable, paths: Sequence[Path], args: tuple, num_workers: int, progress: bool, desc: str
) -> Iterable:
    """``fn(path, *args)`` for every path, in order, optionally in worker processes (a
    DataLoader keeps the order, and ``fn`` must be picklable then)."""
    if num_workers > 0:
        it = DataLoader(
            _FileMap(fn, paths, args), batch_size=None, num_workers=num_workers,
            collate_fn=_identity,
        )  # fmt: skip
    else:
        it = (fn(p, *args) for p in paths)
    if not progress:
        return it
    from tqdm.auto import tqdm  # only for a progress bar (slow to import)

    return tqdm(it, total=len(paths), desc=desc, unit="file", dynamic_ncols=True)

"""Sampling and loading: a deterministic, shardable epoch order and the DataLoader around it.

:class:`EpochSampler` draws each epoch's order from ``(seed, epoch)`` alone (like
DistributedSampler, but also for weighted sampling), so a run resumes and shards exactly.
:func:`make_loader` builds the loader; :func:`set_epoch` advances both sampler and dataset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssamba.data.dataset import AudioDataset, item_generator
from ssamba.data.manifest import Manifest
from ssamba.errors import UsageError


def class_balanced_weights(manifest: Manifest) -> torch.Tensor:
    """Per-example weights for class-balanced sampling: the sum over an example's labels of
    1 / (number of examples with that label) — 1/frequency of its class when single-label."""
    if not manifest.labeled:
        raise UsageError("class-balanced sampling needs a labeled manifest")
    counts = manifest.class_counts()
    w = torch.zeros(len(manifest), dtype=torch.float64)
    for k in range(len(manifest)):
        w[k] = sum(1.0 / counts[c] for c in manifest.label_indices(k))
    return w


class EpochSampler(Sampler[int]):
    """Deterministic per-(seed, epoch) order, sharded like DistributedSampler.

    Without weights: a permutation (or ``range`` when ``shuffle=False``) padded by repeating its
    start to a multiple of ``world_size``; rank ``r`` takes positions ``r, r + world_size, ...``.
    With weights: ``num_samples`` (default: dataset size, rounded up to a multiple of
    ``world_size``) indices drawn with replacement proportionally to the weights, then sharded.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        weights: torch.Tensor | Sequence[float] | None = None,
        num_samples: int | None = None,
    ) -> None:
        if n <= 0:
            raise UsageError("cannot sample from an empty dataset")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UsageError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        self.n, self.seed, self.epoch = n, int(seed), int(epoch)
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64)
            if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise UsageError(f"weights must be {n} finite non-negative numbers, not all zero")
            self.weights = w
        total = num_samples if num_samples is not None else n
        self.total_size = math.ceil(total / world_size) * world_size
        self.num_samples = self.total_size // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self) -> list[int]:
        """The whole epoch's order (all ranks, padded), before sharding."""
        g = item_generator(self.seed, self.epoch, 0, 7)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
            return idx.tolist()
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        order = order.tolist()
        if len(order) < self.total_size:
            reps = math.ceil(self.total_size / len(order))
            order = (order * reps)[: self.total_size]
        return order[: self.total_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank : self.total_size : self.world_size])

    def __len__(self) -> int:
        return self.num_samples


def make_sampler(
    dataset_or_len: Dataset | Manifest | int,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    balanced: bool = False,
    weights: torch.Tensor | Sequence[float] | None = None,
    num_samples: int | None = None,
) -> EpochSampler:
    """An :class:`EpochSampler` for a dataset (an :class:`AudioDataset`, a Manifest or a length).

    ``balanced=True`` draws with replacement with weights ∝ 1/class frequency (needs labels);
    ``weights`` gives explicit per-example weights instead.
    """
    if isinstance(dataset_or_len, int):
        n, manifest = dataset_or_len, None
    else:
        n = len(dataset_or_len)
        manifest = (
            dataset_or_len
            if isinstance(dataset_or_len, Manifest)
            else getattr(dataset_or_len, "manifest", None)
        )
    if balanced:
        if weights is not None:
            raise UsageError("pass either balanced=True or weights, not both")
        if manifest is None:
            raise UsageError("balanced sampling needs a dataset with a labeled manifest")
        weights = class_balanced_weights(manifest)
    return EpochSampler(n, seed, epoch, rank, world_size, shuffle, weights, num_samples)


def make_loader(
    dataset: AudioDataset,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    shuffle: bool = True,
    balanced: bool = False,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` with an :class:`EpochSampler` (seed: the dataset's seed).

    Call :func:`set_epoch` ``(loader, epoch)`` before each epoch: it sets the epoch of both the
    sampler and the dataset. Workers are not persistent, so each epoch's workers see the new epoch.
    """
    seed = getattr(dataset, "seed", 0) if seed is None else seed
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    sampler = make_sampler(dataset, seed, epoch, rank, world_size, shuffle, balanced)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of a loader's sampler and dataset (both drive the randomness)."""
    for obj in (loader.sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)

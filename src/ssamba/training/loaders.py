"""Data loaders of a run: the training loader (made once, resumable mid-epoch, streaming when the
training set is read from shards) and this rank's share of an evaluation set, in order.

The training loader's workers are persistent (started once per run, not once per epoch) and
prefetch :data:`PREFETCH` batches each; a persistent worker keeps its own copy of the dataset,
so the epoch travels with every index (``(epoch, i)``, see :class:`EpochItems`) or, for a
shard stream, in shared memory (:meth:`ShardStream.set_position`).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ssamba.data import ShardStream, make_sampler, set_epoch, streamable
from ssamba.training.distributed import Distributed

PREFETCH = 4  # batches each worker prepares ahead


class ResumableSampler(Sampler[int]):
    """This rank's indices of an epoch from position ``start`` on (to resume mid-epoch)."""

    def __init__(self, sampler, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self):
        return iter(list(self.sampler)[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


class EpochItems(Dataset):
    """``dataset`` indexed by ``(epoch, i)``: sets the epoch of this process's copy first."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        if getattr(self.dataset, "epoch", None) != epoch:
            self.dataset.set_epoch(epoch)
        return self.dataset[i]


class _EpochIndices(Sampler):
    """``(epoch, i)`` for this rank's indices of an epoch from position ``start`` on."""

    def __init__(self, sampler):
        self.sampler, self.epoch, self.start = sampler, 0, 0

    def __iter__(self):
        return ((self.epoch, i) for i in list(self.sampler)[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


def train_order(dataset, seed: int, dist: Distributed, sampling: dict, per_rank: int):
    """What orders the training data: a :class:`ShardStream` for a training set read from shards
    (unless ``sampling`` weighs clips), else an :class:`EpochSampler`. ``len()`` of either is
    this rank's clips per epoch."""
    if streamable(dataset, sampling):
        return ShardStream(dataset, per_rank, seed=seed, rank=dist.rank, world_size=dist.world_size)
    return make_sampler(dataset, seed, 0, dist.rank, dist.world_size, **sampling)


class TrainLoader:
    """The training loader of a run: built once, iterated once per epoch (:meth:`epoch`)."""

    def __init__(self, dataset, order, batch_size, workers, seed, pin_memory=False):
        self.dataset, self.order, self.batch_size = dataset, order, batch_size
        self.stream = isinstance(order, ShardStream)
        self.indices = None if self.stream else _EpochIndices(order)
        # A dedicated generator: the loader's worker seeds must not consume the global torch RNG.
        self.loader = DataLoader(
            order if self.stream else EpochItems(dataset),
            batch_size=batch_size,
            sampler=self.indices,
            num_workers=workers,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed * 100003),
            pin_memory=pin_memory,
            persistent_workers=workers > 0,
            prefetch_factor=PREFETCH if workers > 0 else None,
        )

    def epoch(self, epoch: int, start_batch: int = 0):
        """An iterator over ``epoch``'s batches from micro-batch ``start_batch`` on."""
        if self.stream:
            self.order.set_position(epoch, start_batch)
        else:
            self.order.set_epoch(epoch)
            self.indices.epoch, self.indices.start = epoch, start_batch * self.batch_size
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # the main process's copy (workers=0)
        return iter(self.loader)


def epoch_loader(
    dataset, sampler, batch_size, start_batch, workers, seed, epoch, pin_memory: bool = False
) -> DataLoader:
    """A loader over one epoch's shard, skipping ``start_batch`` batches already consumed (a
    loader per epoch, without persistent workers; :func:`fit` uses :class:`TrainLoader`).

    ``pin_memory`` (on CUDA) lets :func:`to_device` copy batches without blocking the host."""
    dataset.set_epoch(epoch)
    sampler.set_epoch(epoch)
    # A dedicated generator: the loader's worker seeds must not consume the global torch RNG.
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ResumableSampler(sampler, start_batch * batch_size),
        num_workers=workers,
        drop_last=True,
        generator=gen,
        pin_memory=pin_memory,
    )
    set_epoch(loader, epoch)
    return loader


def eval_loader(dataset, dist: Distributed, batch_size: int, workers: int = 0) -> DataLoader:
    """This rank's share of ``dataset`` in dataset order, unshuffled.

    The shards are padded with repeats to equal length (as DistributedSampler does): a caller
    that gathers predictions keeps each ``index`` once."""
    sampler = make_sampler(len(dataset), 0, 0, dist.rank, dist.world_size, shuffle=False)
    return DataLoader(
        dataset,
        batch_size=max(1, batch_size),
        sampler=sampler,
        num_workers=workers,
        pin_memory=dist.device.type == "cuda",
    )


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }

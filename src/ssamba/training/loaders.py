"""Data loaders of a run: one epoch's shard of the training set (resumable mid-epoch) and this
rank's share of an evaluation set, in order."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from ssamba.data import make_sampler, set_epoch
from ssamba.training.distributed import Distributed


class ResumableSampler(Sampler[int]):
    """This rank's indices of an epoch from position ``start`` on (to resume mid-epoch)."""

    def __init__(self, sampler, start: int):
        self.sampler, self.start = sampler, start

    def __iter__(self):
        return iter(list(self.sampler)[self.start :])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


def epoch_loader(
    dataset, sampler, batch_size, start_batch, workers, seed, epoch, pin_memory: bool = False
) -> DataLoader:
    """A loader over one epoch's shard, skipping ``start_batch`` batches already consumed.

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

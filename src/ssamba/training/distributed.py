"""Processes under torchrun: this rank's device, and the collectives the loop needs."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist


def ends_process_group(fn):
    """Decorator for a job that joins torchrun's process group (:meth:`Distributed.from_env`):
    the group it started is destroyed when it returns or fails (NCCL warns about, and can hang
    on, a group left open at exit). A group that existed before the call is the caller's."""

    @functools.wraps(fn)
    def job(*args, **kwargs):
        existed = torch_dist.is_available() and torch_dist.is_initialized()
        try:
            return fn(*args, **kwargs)
        finally:
            if not existed and torch_dist.is_available() and torch_dist.is_initialized():
                torch_dist.destroy_process_group()

    return job


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str | None = None) -> Distributed:
        """Join the process group torchrun describes (if any) and pick this rank's device."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cuda":
            dev = torch.device("cuda", local if dev.index is None else dev.index)
            torch.cuda.set_device(dev)
        if world > 1 and not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, world, local, dev)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over ranks (every rank gets the result)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        torch_dist.all_reduce(t)
        return {k: v / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def weighted_mean(self, totals: dict[str, float], count: int) -> dict[str, float]:
        """sum(totals) / sum(count) over ranks: exact means of sharded evaluations."""
        keys = sorted(totals)
        t = torch.tensor([float(totals[k]) for k in keys] + [float(count)], dtype=torch.float64)
        if self.enabled:
            torch_dist.all_reduce(t)
        return {k: v / max(t[-1].item(), 1.0) for k, v in zip(keys, t[:-1].tolist(), strict=True)}

    def all_true(self, flag: bool) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0])
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MIN)
        return bool(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (picklable objects; every rank gets the list)."""
        if not self.enabled:
            return [obj]
        parts = [None] * self.world_size
        torch_dist.all_gather_object(parts, obj)
        return parts

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

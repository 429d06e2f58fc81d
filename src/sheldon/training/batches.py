"""Mini-batches sliced from whole tensors that already sit on the device, so a step costs one
gather instead of a per-sample collate."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


class Batches:
    """Mini-batches of (x, y) sliced from tensors on the device, shuffled per epoch from
    (seed, epoch) so a resumed run sees the same order. Under DistributedDataParallel each of
    `world` processes takes every world-th sample of each batch: the ranks' gradients, averaged
    by DDP, are the gradient of the whole batch, as in a single process."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        seed: int | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0
        # A last batch too small to give every process a sample is dropped (DDP needs all ranks
        # to take the same number of steps).
        full, rest = divmod(len(y), batch_size)
        self.steps = full + (rest >= world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.seed is None:
            order = None
        else:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(len(self.y), generator=generator).to(self.y.device)
        for step in range(self.steps):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            if order is None:  # evaluation: one process, or a shard of the data (see shard())
                yield self.x[batch], self.y[batch]
            else:
                index = order[batch][self.rank :: self.world]
                yield self.x[index], self.y[index]


def shard(x: torch.Tensor, y: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's contiguous share of an evaluation set (its totals are summed across ranks)."""
    lo, hi = len(y) * rank // world, len(y) * (rank + 1) // world
    return x[lo:hi], y[lo:hi]


def to_tensors(xy: tuple[np.ndarray, np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(xy[0]).to(device), torch.from_numpy(xy[1]).to(device)

"""The order and augmentation of every training sample, as a function of (seed, epoch,
position) alone, so a resumed run draws what the uninterrupted one would; and the batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from contract.palette import Color
from model.data.datasets import SegmentationDataset
from model.data.transforms import collate_padded
from model.training.distributed import Processes

# (images uint8 [N, 3, H, W], targets [N, H, W]) batches.
Batches = DataLoader[tuple[Tensor, Tensor]]


class TrainSampler(Sampler[tuple[int, int]]):
    """An endless stream of (index, augmentation seed) for one rank, startable anywhere.

    Epoch e is a permutation seeded by (seed, e), padded to a multiple of the world size
    and dealt out rank by rank, so ``start`` (samples this rank already used) is all a
    resumed run needs to carry on with the very same samples and augmentations.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        if size < 1:
            raise ValueError("cannot sample from an empty data set")
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        per_rank = math.ceil(self.size / self.world_size)
        epoch, offset = divmod(self.start, per_rank)
        while True:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=generator)
            # Repeat to a multiple of the world size (several times over for tiny sets).
            order = order.repeat(math.ceil(per_rank * self.world_size / self.size))
            order = order[: per_rank * self.world_size]
            seeds = torch.randint(0, 2**62, (per_rank * self.world_size,), generator=generator)
            mine, my_seeds = (
                order[self.rank :: self.world_size],
                seeds[self.rank :: self.world_size],
            )
            for position in range(offset, per_rank):
                yield int(mine[position]), int(my_seeds[position])
            epoch, offset = epoch + 1, 0


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: every sample exactly once across ranks (evaluation)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Augmented(Dataset[tuple[Tensor, Tensor]]):
    """Applies ``transforms`` under the torch RNG seeded by the sampler's per-sample seed."""

    def __init__(self, dataset: SegmentationDataset, transforms: Callable[..., Any] | None):
        self.dataset = dataset
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index, seed = key
        image, target = self.dataset[index]
        if self.transforms is None:
            return image, target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, target = self.transforms(image, target)
        return image, target


def make_loaders(
    train_set: SegmentationDataset,
    val_set: SegmentationDataset,
    *,
    batch_size: int,
    augment: Callable[..., Any] | None,
    fill: Color,
    workers: int,
    seed: int,
    start: int,
    procs: Processes,
    pin: bool,
) -> tuple[Batches, Batches]:
    """This rank's endless training batches from sample ``start`` on, and its share of the
    validation set at native size."""
    collate = partial(collate_padded, fill_rgb=fill)
    sampler = TrainSampler(len(train_set), seed, procs.rank, procs.world_size, start)
    train_loader: Batches = DataLoader(
        Augmented(train_set, augment),
        batch_sampler=BatchSampler(sampler, batch_size, drop_last=True),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        # Own generators: creating a loader iterator must not draw from the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader: Batches = DataLoader(
        val_set,
        batch_size=1,
        sampler=ShardSampler(len(val_set), procs.rank, procs.world_size),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    return train_loader, val_loader

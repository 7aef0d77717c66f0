"""Sampling a resumed run can repeat: a sampler started at sample k carries on the very
stream of one started at 0, ranks share each epoch, and augmentation follows the sample's
seed, not the global RNG."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import torch

from model.data.layouts import voc_dataset
from model.training.sampling import Augmented, ShardSampler, TrainSampler


def test_a_sampler_started_later_carries_on_the_same_stream() -> None:
    # Past the end of the first epoch (10 samples), seeds included.
    whole = list(islice(TrainSampler(10, seed=3), 25))
    assert list(islice(TrainSampler(10, seed=3, start=7), 18)) == whole[7:]
    assert list(islice(TrainSampler(10, seed=4), 25)) != whole


def test_ranks_share_every_epoch_and_validation_shards_cover_each_sample_once() -> None:
    # 10 samples over 3 ranks: 4 each per epoch, two repeated to pad the epoch.
    shares = [list(islice(TrainSampler(10, 0, rank, 3), 4)) for rank in range(3)]
    indices = [index for share in shares for index, _ in share]
    assert len(indices) == 12
    assert set(indices) == set(range(10))
    assert sorted(i for rank in range(3) for i in ShardSampler(10, rank, 3)) == list(range(10))


def test_augmentation_follows_the_sample_seed_not_the_global_rng(synth: Path) -> None:
    def noisy(image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image + torch.rand(()), target

    augmented = Augmented(voc_dataset(synth, "train"), noisy)
    torch.manual_seed(0)
    first, _ = augmented[(1, 42)]
    torch.manual_seed(1)
    state = torch.get_rng_state()
    again, _ = augmented[(1, 42)]
    assert torch.equal(first, again)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    other, _ = augmented[(1, 43)]
    assert not torch.equal(first, other)

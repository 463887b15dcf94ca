"""A seeded, endless shuffling sampler: epoch e is a permutation drawn from (seed, e).

Its order depends only on the seed, so replaying it on resume reaches the same position.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class SeededShuffleSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed = num_samples, seed

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        for epoch in itertools.count():
            yield from self.epoch_order(epoch)

    def __len__(self) -> int:
        return self.num_samples

"""Seeded, endless batch samplers whose position is a number of batches.

Epoch ``e``'s batches are a function of ``(seed, e)`` alone, so the position after ``n``
batches is known without drawing them: a sampler built with ``start=n`` begins there (resume
fast-forwards instead of replaying the data loader).

- :class:`ShuffleBatchSampler`: a seeded permutation per epoch, cut into batches.
- :class:`LengthGroupedBatchSampler`: text-only and image samples never share a batch; within
  each, megabatches of ``megabatch`` batches are sorted by length and cut into batches (little
  padding), and the order of the batches is shuffled.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

MEGABATCH = 50  # batches per length-sorted megabatch (LLaVA's practice)


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class SeededShuffleSampler(Sampler[int]):
    """Endless sample indices: epoch e is a permutation drawn from (seed, e)."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples, self.seed = num_samples, seed

    def epoch_order(self, epoch: int) -> list[int]:
        return torch.randperm(self.num_samples, generator=_generator(self.seed, epoch)).tolist()

    def __iter__(self) -> Iterator[int]:
        for epoch in itertools.count():
            yield from self.epoch_order(epoch)

    def __len__(self) -> int:
        return self.num_samples


class EpochBatchSampler(Sampler[list[int]]):
    """Endless batches, epoch after epoch, starting ``start`` batches in.

    A subclass defines :meth:`epoch_batches`; every epoch must have the same number of batches
    (:meth:`__len__`), so that a batch count maps to (epoch, offset) by division.
    """

    kind = "base"
    sampler = None  # mmengine's DistSamplerSeedHook looks for ``batch_sampler.sampler``
    rank, world_size = 0, 1  # see shard()

    def __init__(self, batch_size: int, seed: int, start: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size, self.seed, self.start = batch_size, seed, start

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def position(self, batches: int) -> tuple[int, int]:
        """(epoch, batch within it) after ``batches`` batches."""
        return divmod(batches, len(self))

    def shard(self, rank: int, world_size: int) -> EpochBatchSampler:
        """Yield only rank ``rank``'s share of each (global) batch: samples ``rank``,
        ``rank + world_size``, … of it, so the ranks' shares are disjoint; a batch with fewer
        samples than ranks is repeated cyclically first (no rank gets an empty one)."""
        self.rank, self.world_size = rank, world_size
        return self

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = self.position(self.start)
        for e in itertools.count(epoch):
            for batch in self.epoch_batches(e)[offset:]:
                yield self._share(batch)
            offset = 0

    def _share(self, batch: list[int]) -> list[int]:
        if self.world_size == 1:
            return batch
        if len(batch) < self.world_size:
            batch = [batch[i % len(batch)] for i in range(self.world_size)]
        return batch[self.rank::self.world_size]

    def state(self, batches: int) -> dict[str, Any]:
        """What a checkpoint records: enough to tell whether a resumed sampler is the same."""
        epoch, offset = self.position(batches)
        return {"kind": self.kind, "seed": self.seed, "batch_size": self.batch_size,
                "batches_per_epoch": len(self), "batches": batches, "epoch": epoch,
                "offset": offset,
                **({"world_size": self.world_size} if self.world_size > 1 else {})}


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


class ShuffleBatchSampler(EpochBatchSampler):
    """A seeded permutation per epoch cut into batches (the last one may be short)."""

    kind = "shuffle"

    def __init__(self, num_samples: int, batch_size: int, seed: int, start: int = 0) -> None:
        if num_samples < 1:
            raise ValueError("cannot sample from an empty dataset")
        super().__init__(batch_size, seed, start)
        self.order = SeededShuffleSampler(num_samples, seed)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return _chunks(self.order.epoch_order(epoch), self.batch_size)

    def __len__(self) -> int:
        return -(-self.order.num_samples // self.batch_size)


class LengthGroupedBatchSampler(EpochBatchSampler):
    """Batches of one modality and similar length; batch order shuffled per epoch.

    ``keys[i] = (has_image, length)``. Each modality's samples are shuffled, split into
    megabatches of ``megabatch × batch_size``, each sorted by length (longest first) and cut
    into batches; the batches of both modalities are then shuffled together, and the one with
    the most tokens is put first so that an out-of-memory shows at the first step.
    """

    kind = "length_grouped"

    def __init__(self, keys: Sequence[tuple[bool, int]], batch_size: int, seed: int,
                 start: int = 0, *, megabatch: int = MEGABATCH) -> None:
        if not keys:
            raise ValueError("cannot sample from an empty dataset")
        super().__init__(batch_size, seed, start)
        self.lengths = [int(length) for _, length in keys]
        self.groups = [[i for i, (image, _) in enumerate(keys) if image == want]
                       for want in (False, True)]
        self.megabatch = megabatch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        generator = _generator(self.seed, epoch)
        batches: list[list[int]] = []
        for group in self.groups:
            order = [group[i] for i in torch.randperm(len(group), generator=generator).tolist()]
            for mega in _chunks(order, self.megabatch * self.batch_size):
                mega.sort(key=lambda i: -self.lengths[i])  # stable: ties keep shuffled order
                batches += _chunks(mega, self.batch_size)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        biggest = max(range(len(batches)), key=lambda b: self._tokens(batches[b]))
        batches.insert(0, batches.pop(biggest))
        return batches

    def _tokens(self, batch: list[int]) -> int:
        return len(batch) * max(self.lengths[i] for i in batch)

    def __len__(self) -> int:
        return sum(-(-len(group) // self.batch_size) for group in self.groups)

    def state(self, batches: int) -> dict[str, Any]:
        return {**super().state(batches), "megabatch": self.megabatch}


def padding_fraction(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of padded positions when each batch is right-padded to its longest sample."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return 1 - real / padded if padded else 0.0

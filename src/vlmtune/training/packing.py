"""Sequence packing: several text-only samples in one row, each still seeing only itself.

A packed row is the samples' tokens end to end, with ``position_ids`` restarting at 0 for each
sample and the label of each sample's first token set to -100 (so no sample is trained to
predict the next one's start). Image samples are never packed.

Isolation relies on the model building a block-diagonal causal mask from ``position_ids``,
which transformers (≥ 5) does when it gets ``position_ids`` and no 2-D ``attention_mask``:
the engine drops the mask for packed batches. Right padding needs no mask under a causal
mask (no real token attends to a later pad, and pads carry no labels).
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from vlmtune.data.templates import IGNORE_INDEX

log = logging.getLogger(__name__)


def pack_by_length(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of at most ``capacity`` tokens (best fit, longest first).

    Each bin lists its indices in ascending order; bins are ordered by their first index.
    """
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin number), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        size = lengths[i]
        if size > capacity:
            raise ValueError(f"sample {i} has {size} tokens > capacity {capacity}")
        slot = bisect.bisect_left(free, (size, -1))
        if slot < len(free):
            room, b = free.pop(slot)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - size > 0:
            bisect.insort(free, (room - size, b))
    return sorted((sorted(b) for b in bins), key=lambda b: b[0])


def pack_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from tokenized samples: ids and labels concatenated, positions per sample."""
    labels = []
    for sample in samples:
        own = sample["labels"].clone()
        own[0] = IGNORE_INDEX
        labels.append(own)
    return {
        "input_ids": torch.cat([s["input_ids"] for s in samples]),
        "labels": torch.cat(labels),
        "position_ids": torch.cat([torch.arange(len(s["input_ids"])) for s in samples]),
        "images": None,
    }


class PackedDataset(Dataset):
    """A dataset's text-only samples packed into rows of at most ``max_length`` tokens.

    Items are the packed text rows, then the image samples one by one (unchanged).
    ``modality_lengths()`` gives each item's ``(has_image, tokens)`` for the batch sampler:
    exact for packed rows (text-only samples are tokenized once here to measure them).
    """

    def __init__(self, dataset: Any, max_length: int) -> None:
        self.dataset = dataset
        keys = dataset.modality_lengths()
        text = [i for i, (image, _) in enumerate(keys) if not image]
        lengths = [len(dataset[i]["input_ids"]) for i in text]
        packs = [[text[j] for j in pack] for pack in pack_by_length(lengths, max_length)]
        length_of = dict(zip(text, lengths, strict=True))
        self.items = packs + [[i] for i, (image, _) in enumerate(keys) if image]
        self.keys = [(False, sum(length_of[i] for i in pack)) for pack in packs]
        self.keys += [(True, length) for image, length in keys if image]
        log.info("packed %d text-only samples into %d rows of <= %d tokens", len(text),
                 len(packs), max_length)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        indices = self.items[index]
        image, _ = self.keys[index]
        if image:
            return self.dataset[indices[0]]
        return pack_samples([self.dataset[i] for i in indices])

    def modality_lengths(self) -> list[tuple[bool, int]]:
        return list(self.keys)


def packing_error(loss_of: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                  samples: Sequence[dict[str, Any]], collate: Callable, *,
                  rtol: float = 1e-4) -> str | None:
    """Why packing ``samples`` into one row would change their loss, or None if it would not.

    ``loss_of(batch)`` is the mean token loss of a batch (the model in eval mode). A model
    that does not isolate packed samples by ``position_ids`` (it needs a 2-D mask, or derives
    positions from the mask) fails this check.
    """
    if len(samples) < 2:
        return None
    wrap = PackedCollator(collate)
    with torch.no_grad():
        packed = loss_of(wrap([pack_samples(samples)])).item()
        apart = [loss_of(collate([s])).item() for s in samples]
    counts = [int((s["labels"][1:] != IGNORE_INDEX).sum()) for s in samples]
    want = sum(a * n for a, n in zip(apart, counts, strict=True)) / max(sum(counts), 1)
    if abs(packed - want) <= rtol * max(abs(want), 1.0):
        return None
    return (f"a packed row's loss is {packed:.6f}, its samples' apart {want:.6f}: the model "
            "lets packed samples see each other")


class PackedCollator:
    """Wraps a collator: adds ``position_ids`` when any sample is a packed row.

    Rows without their own positions count from 0; padding after a row gets positions that
    start again at 0, so the model sees it as a separate (label-free) sequence.
    """

    def __init__(self, collate: Callable[[list[dict]], dict[str, torch.Tensor]]) -> None:
        self.collate = collate

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collate(samples)
        if not any("position_ids" in s for s in samples):
            return batch
        width = batch["input_ids"].shape[1]
        positions = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            own = sample.get("position_ids")
            positions[row, :n] = own if own is not None else torch.arange(n)
            positions[row, n:] = torch.arange(width - n)
        batch["position_ids"] = positions
        return batch

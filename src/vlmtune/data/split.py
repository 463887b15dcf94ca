"""Train / held-out split by group, stable under additions (a record's side never moves)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TypeVar

from vlmtune.errors import ConfigError, DataError

T = TypeVar("T")


def assign_split(group_key: str, *, heldout_fraction: float, seed: int) -> str:
    """``"heldout"`` if the group's hash in [0, 1) falls below the fraction, else ``"train"``."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ConfigError(f"dataset.heldout_fraction={heldout_fraction!r} must be within [0, 1]")
    digest = hashlib.blake2b(f"{seed}:{group_key}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    return "heldout" if u < heldout_fraction else "train"


def split_records(
    records: Iterable[T],
    *,
    group_of: Callable[[T], str],
    heldout_fraction: float,
    seed: int,
) -> tuple[list[T], list[T]]:
    """(train, heldout); all records of one group land on the same side."""
    train: list[T] = []
    heldout: list[T] = []
    groups = set()
    for rec in records:
        key = group_of(rec)
        groups.add(key)
        side = assign_split(key, heldout_fraction=heldout_fraction, seed=seed)
        (heldout if side == "heldout" else train).append(rec)
    if not train or not heldout:
        empty = "train" if not train else "heldout"
        raise DataError(
            f"the {empty} split is empty ({len(train)} train / {len(heldout)} heldout records "
            f"from {len(groups)} groups)",
            reason="empty_split",
            hint="change dataset.heldout_fraction or dataset.split_seed, or add more data",
        )
    return train, heldout

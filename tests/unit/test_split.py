"""Group split: stable, deterministic, never puts one group on both sides."""

from __future__ import annotations

import pytest

from vlmtune.data.split import assign_split, split_records
from vlmtune.errors import DataError


def _records(groups: range, per_group: int = 3) -> list[dict]:
    return [
        {"id": f"{g}-{i}", "group": f"images/{g}.jpg"} for g in groups for i in range(per_group)
    ]


def _split(records: list[dict], fraction: float = 0.3, seed: int = 0):
    return split_records(
        records, group_of=lambda r: r["group"], heldout_fraction=fraction, seed=seed
    )


def test_no_group_on_both_sides() -> None:
    train, heldout = _split(_records(range(50)))
    assert {r["group"] for r in train}.isdisjoint({r["group"] for r in heldout})
    assert len(train) + len(heldout) == 150
    assert 0.1 < len(heldout) / 150 < 0.5


def test_adding_records_never_moves_existing_ones() -> None:
    small_train, small_heldout = _split(_records(range(30)))
    big_train, big_heldout = _split(_records(range(200)) + _records(range(30), per_group=5))
    assert {r["id"] for r in small_train} <= {r["id"] for r in big_train}
    assert {r["id"] for r in small_heldout} <= {r["id"] for r in big_heldout}


def test_deterministic_and_seed_dependent() -> None:
    keys = [f"k{i}" for i in range(100)]
    first = [assign_split(k, heldout_fraction=0.5, seed=1) for k in keys]
    assert first == [assign_split(k, heldout_fraction=0.5, seed=1) for k in keys]
    assert first != [assign_split(k, heldout_fraction=0.5, seed=2) for k in keys]
    assert set(first) == {"train", "heldout"}


def test_empty_side_raises_with_hint() -> None:
    with pytest.raises(DataError) as info:
        _split(_records(range(10)), fraction=0.0)
    assert info.value.reason == "empty_split"
    assert "dataset.heldout_fraction" in info.value.hint
    assert "dataset.split_seed" in info.value.hint
    with pytest.raises(DataError, match="empty_split"):  # one group can only fill one side
        _split(_records(range(1)), fraction=0.5)

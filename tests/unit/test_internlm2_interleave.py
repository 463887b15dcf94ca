"""InternLM2's fused wqkv: rows are kv_heads blocks of [G query heads, key head, value head]."""

from __future__ import annotations

import pytest
import torch

from vlmtune.convert.internlm2 import fuse_wqkv, split_wqkv
from vlmtune.errors import CheckpointError


def _labelled(heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """A fused weight whose every row holds its (kind, head) label, built by hand."""
    group, rows = heads // kv_heads, []
    for j in range(kv_heads):
        for g in range(group):
            rows += [[100 + j * group + g] * 3] * head_dim  # query head j·G+g
        rows += [[200 + j] * 3] * head_dim  # key head j
        rows += [[300 + j] * 3] * head_dim  # value head j
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (4, 1), (16, 8)])
def test_split_puts_every_head_where_the_published_layout_says(heads, kv_heads):
    q, k, v = split_wqkv(_labelled(heads, kv_heads, 2), heads, kv_heads, 2)
    assert q[:, 0].tolist() == [100 + i for i in range(heads) for _ in range(2)]
    assert k[:, 0].tolist() == [200 + j for j in range(kv_heads) for _ in range(2)]
    assert v[:, 0].tolist() == [300 + j for j in range(kv_heads) for _ in range(2)]


def test_group_of_two_is_not_a_plain_split():
    fused = _labelled(4, 2, 1)
    q, _, _ = split_wqkv(fused, 4, 2, 1)
    assert q[:, 0].tolist() == [100, 101, 102, 103]
    assert fused[:4, 0].tolist() == [100, 101, 200, 300]  # a plain [q|k|v] split is wrong


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (4, 1), (6, 2)])
def test_fuse_is_the_exact_inverse(heads, kv_heads):
    fused = torch.randn((heads + 2 * kv_heads) * 8, 5)
    assert torch.equal(fuse_wqkv(*split_wqkv(fused, heads, kv_heads, 8), heads, kv_heads, 8),
                       fused)
    bias = torch.randn((heads + 2 * kv_heads) * 8)
    assert torch.equal(fuse_wqkv(*split_wqkv(bias, heads, kv_heads, 8), heads, kv_heads, 8),
                       bias)


def test_wrong_row_count_is_refused():
    with pytest.raises(CheckpointError, match="rows"):
        split_wqkv(torch.zeros(10, 4), 4, 2, 2)

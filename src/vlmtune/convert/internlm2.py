"""InternLM2's fused ``attention.wqkv`` ↔ separate q/k/v projections.

The fused weight's rows are ``kv_heads`` blocks, each ``[G query heads, 1 key head, 1 value
head]`` of ``head_dim`` rows (G = heads / kv_heads). With one KV head this equals a plain
``[q | k | v]`` split, which is why tests need kv_heads > 1 to see a missing de-interleave.
"""

from __future__ import annotations

import torch

from vlmtune.errors import CheckpointError


def _check(rows: int, heads: int, kv_heads: int, head_dim: int) -> int:
    if heads % kv_heads:
        raise CheckpointError(f"num_attention_heads={heads} is not a multiple of "
                              f"num_key_value_heads={kv_heads}")
    group = heads // kv_heads
    if rows != kv_heads * (group + 2) * head_dim:
        raise CheckpointError(f"wqkv has {rows} rows; expected kv_heads·(G+2)·head_dim = "
                              f"{kv_heads * (group + 2) * head_dim}")
    return group


def split_wqkv(wqkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused ``(kv_heads·(G+2)·head_dim, in)`` → q ``(heads·hd, in)``, k, v ``(kv·hd, in)``."""
    group = _check(wqkv.shape[0], heads, kv_heads, head_dim)
    blocks = wqkv.reshape(kv_heads, group + 2, head_dim, *wqkv.shape[1:])
    q = blocks[:, :group].reshape(heads * head_dim, *wqkv.shape[1:])
    k = blocks[:, group].reshape(kv_heads * head_dim, *wqkv.shape[1:])
    v = blocks[:, group + 1].reshape(kv_heads * head_dim, *wqkv.shape[1:])
    return q.contiguous(), k.contiguous(), v.contiguous()


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kv_heads: int,
              head_dim: int) -> torch.Tensor:
    """The exact inverse of :func:`split_wqkv`."""
    group = heads // kv_heads
    tail = q.shape[1:]
    blocks = torch.cat([q.reshape(kv_heads, group, head_dim, *tail),
                        k.reshape(kv_heads, 1, head_dim, *tail),
                        v.reshape(kv_heads, 1, head_dim, *tail)], dim=1)
    _check(blocks.shape[0] * blocks.shape[1] * head_dim, heads, kv_heads, head_dim)
    return blocks.reshape(kv_heads * (group + 2) * head_dim, *tail).contiguous()

"""Sizes, shard plans, the OUT.tmp guarantee and the one-tensor-at-a-time safetensors writer."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from vlmtune.convert.names import StoredNames, canonical
from vlmtune.convert.safety import staged_output
from vlmtune.convert.shards import parse_size
from vlmtune.convert.stream import Entry, iter_tensors, plan_shards, read_entries, write_planned
from vlmtune.errors import CheckpointError


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("500MB") == 500_000_000
    assert parse_size("1GiB") == 2**30
    assert parse_size("40KB") == 40_000
    assert parse_size(123) == 123
    with pytest.raises(CheckpointError, match="max-shard-size"):
        parse_size("two gigs")


def test_plan_shards_never_exceeds_the_limit_except_for_one_big_tensor():
    entries = [Entry(f"t{i}", "F32", (n,), 0, 4 * n) for i, n in enumerate([10, 10, 30, 5, 5])]
    plan = plan_shards(entries, limit=80)  # bytes: 40, 40 | 120 | 20, 20
    assert [[e.name for e in group] for group in plan] == [["t0", "t1"], ["t2"], ["t3", "t4"]]


def test_staged_output_leaves_nothing_on_failure_and_refuses_an_existing_out(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(out) as tmp:
        (tmp / "half.safetensors").write_bytes(b"x")
        raise RuntimeError("interrupted")
    assert not out.exists() and not (tmp_path / "out.tmp").exists()
    with staged_output(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(CheckpointError, match="--force"), staged_output(out):
        pass
    with staged_output(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]


def test_planned_file_reads_back_with_safetensors_itself(tmp_path):
    tensors = {"w": torch.randn(3, 4), "h": torch.randn(5).to(torch.bfloat16),
               "i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
               "e": torch.zeros(0, 2)}
    entries, offset = [], 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        dtype = {torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}[t.dtype]
        entries.append(Entry(name, dtype, tuple(t.shape), offset, offset + size))
        offset += size
    write_planned(tmp_path / "m.safetensors", entries, lambda e: tensors[e.name])
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as handle:
        for name, t in tensors.items():
            assert torch.equal(handle.get_tensor(name), t)
    assert [e.name for e in read_entries(tmp_path / "m.safetensors")] == list(tensors)
    assert all(torch.equal(t, tensors[e.name])
               for e, t in iter_tensors(tmp_path / "m.safetensors"))


def test_loaded_names_resolve_to_legacy_stored_names():
    stored = StoredNames(["language_model.model.layers.0.mlp.up_proj.weight",
                          "language_model.lm_head.weight", "vision_tower.encoder.x.weight"])
    assert stored.resolve("model.language_model.layers.0.mlp.up_proj.weight") == \
        "language_model.model.layers.0.mlp.up_proj.weight"
    assert stored.resolve("lm_head.weight") == "language_model.lm_head.weight"
    assert stored.resolve("model.vision_tower.encoder.x.weight") == "vision_tower.encoder.x.weight"
    assert canonical("model.layers.1.q") == "layers.1.q"
    with pytest.raises(CheckpointError, match="no stored tensor"):
        stored.resolve("model.language_model.layers.9.mlp.up_proj.weight")

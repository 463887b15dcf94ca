"""Shard-by-shard safetensors I/O: read one shard at a time, write size-bounded shards.

Reading goes through ``safe_open`` (memory-mapped; a tensor is materialised only when asked
for), writing buffers tensors until ``max_shard_size`` bytes and then flushes a shard, so a
conversion holds at most one input shard and one output shard in memory. The index
(``model.safetensors.index.json``) is rebuilt from what was written.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vlmtune.errors import CheckpointError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Test hook: seconds to sleep after writing each shard (lets a test kill a conversion mid-way).
SLEEP_ENV = "VLMTUNE_CONVERT_SHARD_SLEEP"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str | int) -> int:
    """``"2GB"`` → 2_000_000_000 (also KB/MB, KiB/MiB/GiB, or a plain byte count)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise CheckpointError(f"--max-shard-size={text!r} is not a size like 2GB or 500MB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory, in index order."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX
    if index.exists():
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [model_dir / name for name in names]
    if (model_dir / SINGLE).exists():
        return [model_dir / SINGLE]
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir} holds no *.safetensors weights")
    return files


def iter_shards(model_dir: Path
                ) -> Iterator[tuple[Path, Iterator[tuple[str, torch.Tensor]]]]:
    """Yield ``(file, tensors)`` per shard; ``tensors`` reads one ``(name, tensor)`` at a
    time (plain reads, no memory map)."""
    from vlmtune.convert.stream import iter_tensors

    for file in weight_files(model_dir):
        yield file, ((entry.name, tensor) for entry, tensor in iter_tensors(file))


def tensor_names(model_dir: Path) -> dict[str, tuple[list[int], str]]:
    """``{name: (shape, dtype)}`` of every tensor, read from the headers only."""
    out = {}
    for file in weight_files(model_dir):
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118
                sl = handle.get_slice(name)
                out[name] = (list(sl.get_shape()), sl.get_dtype())
    return out


class ShardWriter:
    """Write tensors into ``out_dir`` as shards of at most ``max_shard_size`` bytes."""

    def __init__(self, out_dir: Path, max_shard_size: int | str = "2GB") -> None:
        self.out_dir = Path(out_dir)
        self.limit = parse_size(max_shard_size)
        self.buffer: dict[str, torch.Tensor] = {}
        self.buffered = 0
        self.written: list[tuple[str, list[str]]] = []
        self.total = 0
        self.sleep = float(os.environ.get(SLEEP_ENV, "0") or 0)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered + size > self.limit:
            self.flush()
        self.buffer[name] = tensor.contiguous()
        self.buffered += size
        self.total += size

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"part-{len(self.written):05d}.safetensors"
        save_file(self.buffer, str(self.out_dir / name), metadata={"format": "pt"})
        self.written.append((name, list(self.buffer)))
        self.buffer, self.buffered = {}, 0
        if self.sleep:
            time.sleep(self.sleep)

    def close(self) -> list[str]:
        """Flush, give the shards their final names, write the index; returns the file names."""
        self.flush()
        if len(self.written) == 1:
            (self.out_dir / self.written[0][0]).rename(self.out_dir / SINGLE)
            return [SINGLE]
        count, weight_map, names = len(self.written), {}, []
        for i, (tmp_name, keys) in enumerate(self.written):
            final = f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            (self.out_dir / tmp_name).rename(self.out_dir / final)
            weight_map.update(dict.fromkeys(keys, final))
            names.append(final)
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(
            weight_map.items()))}
        (self.out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        return names

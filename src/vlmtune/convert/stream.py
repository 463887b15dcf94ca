"""safetensors read and written one tensor at a time, without memory-mapping.

The format (published with safetensors): an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
tensor bytes. Reading a tensor is a seek + ``readinto``; writing plans each output file's
header from the known names, dtypes and shapes, then appends the tensors as they are produced.
So a merge whose tensors keep their shapes holds one tensor (plus its update) at a time, not
a shard, and page-cache pages of a mapped file never count against it.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmtune.errors import CheckpointError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
          "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the bytes
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_entries(file: Path) -> list[Entry]:
    """The tensors of one safetensors file, in storage order."""
    with open(file, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    start = 8 + size
    entries = [Entry(name, info["dtype"], tuple(info["shape"]), start + info["data_offsets"][0],
                     start + info["data_offsets"][1])
               for name, info in header.items() if name != "__metadata__"]
    return sorted(entries, key=lambda e: e.begin)


def read_tensor(handle, entry: Entry) -> torch.Tensor:
    if entry.dtype not in DTYPES:
        raise CheckpointError(f"tensor {entry.name!r} has dtype {entry.dtype}, not supported")
    buffer = bytearray(entry.nbytes)
    handle.seek(entry.begin)
    handle.readinto(buffer)
    if not buffer:
        return torch.empty(entry.shape, dtype=DTYPES[entry.dtype])
    return torch.frombuffer(buffer, dtype=DTYPES[entry.dtype]).reshape(entry.shape)


def iter_tensors(file: Path) -> Iterator[tuple[Entry, torch.Tensor]]:
    with open(file, "rb") as handle:
        for entry in read_entries(file):
            yield entry, read_tensor(handle, entry)


def plan_shards(entries: list[Entry], limit: int) -> list[list[Entry]]:
    """Group consecutive entries into output files of at most ``limit`` bytes (a tensor larger
    than the limit gets a file of its own)."""
    groups: list[list[Entry]] = []
    size = 0
    for entry in entries:
        if not groups or (size + entry.nbytes > limit and groups[-1]):
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += entry.nbytes
    return groups


def write_planned(file: Path, entries: list[Entry],
                  produce: Callable[[Entry], torch.Tensor]) -> None:
    """Write ``entries`` (same names, dtypes, shapes) to ``file``, one produced tensor at a
    time; ``produce(entry)`` must return a tensor of exactly that dtype and shape."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in entries:
        header[entry.name] = {"dtype": entry.dtype, "shape": list(entry.shape),
                              "data_offsets": [offset, offset + entry.nbytes]}
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the byte buffer 8-byte aligned
    with open(file, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for entry in entries:
            tensor = produce(entry)
            if tuple(tensor.shape) != entry.shape or NAMES.get(tensor.dtype) != entry.dtype:
                raise CheckpointError(f"tensor {entry.name!r} changed shape or dtype")
            data = tensor.contiguous().view(torch.uint8).reshape(-1).numpy() \
                if tensor.numel() else b""
            out.write(memoryview(data) if tensor.numel() else data)

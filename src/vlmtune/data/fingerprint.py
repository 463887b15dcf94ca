"""A content fingerprint of a set of source files (to tell whether a dataset changed)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20


def fingerprint_files(root: Path, relpaths: Iterable[str]) -> str:
    """blake2b (16-byte hex) over the sorted relative paths and each file's bytes.

    A missing file contributes its path and a "missing" marker instead of failing.
    """
    h = hashlib.blake2b(digest_size=16)
    for rel in sorted(set(relpaths)):
        h.update(b"path\0" + rel.encode("utf-8") + b"\0")
        path = Path(root) / rel
        try:
            with path.open("rb") as f:
                h.update(b"file\0" + path.stat().st_size.to_bytes(8, "big"))
                while chunk := f.read(CHUNK):
                    h.update(chunk)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            h.update(b"missing\0")
    return h.hexdigest()

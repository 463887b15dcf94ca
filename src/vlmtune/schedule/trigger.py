"""The trigger: a cheap content fingerprint of the folder new data lands in.

Every file under the root is listed with its size and mtime; only files whose (size, mtime)
differ from the last look are read and hashed (the previous hashes are kept in the spec's
state), so an unchanged folder costs a directory walk. The fingerprint covers names and
content, not mtimes: touching a file without changing it is not new data.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from vlmtune.errors import ConfigError

CHUNK = 1 << 20


@dataclass
class Fingerprint:
    digest: str
    files: dict[str, list] = field(default_factory=dict)  # relpath -> [size, mtime_ns, hash]
    hashed: int = 0  # files read this time


def fingerprint_root(root: Path, known: dict[str, list] | None = None) -> Fingerprint:
    """Fingerprint ``root``; ``known`` is the previous :attr:`Fingerprint.files`."""
    if not root.is_dir():
        raise ConfigError(f"trigger.root={str(root)!r} is not a directory")
    known = known or {}
    files: dict[str, list] = {}
    hashed = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            stat = path.stat()
            entry = known.get(rel)
            if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
                files[rel] = entry
                continue
            files[rel] = [stat.st_size, stat.st_mtime_ns, _hash_file(path)]
            hashed += 1
    total = hashlib.blake2b(digest_size=16)
    for rel in sorted(files):
        total.update(f"{rel}\0{files[rel][2]}\n".encode())
    return Fingerprint(total.hexdigest(), files, hashed)


def _hash_file(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

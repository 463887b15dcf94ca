"""The prepared dataset: the ingest stage's output files, written as records stream in, and a
cache of finished outputs keyed by source fingerprint + ingest options.

Files: ``train.jsonl``, ``heldout.jsonl``, ``rejected.jsonl`` (only when a record was dropped)
and ``manifest.json`` (written last: its presence marks a complete set).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import IO

SIDES = ("train", "heldout")
MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
FILES = ("train.jsonl", "heldout.jsonl", REJECTED, MANIFEST)  # manifest last
COMPLETED = "COMPLETED"


def prepared_key(fingerprint: str, options: dict) -> str:
    """A short hash of the source content and every option that shapes the prepared files."""
    payload = json.dumps({"fingerprint": fingerprint, "options": options}, sort_keys=True,
                         default=str)
    return hashlib.blake2b(payload.encode(), digest_size=10).hexdigest()


class SplitWriter:
    """Appends each record as one JSON line to ``train.jsonl`` or ``heldout.jsonl``."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.counts = dict.fromkeys(SIDES, 0)
        self._files: dict[str, IO[str]] = {}
        for side in SIDES:
            self._files[side] = open(out_dir / f"{side}.jsonl", "w", encoding="utf-8")  # noqa: SIM115

    def write(self, side: str, record: dict) -> None:
        self._files[side].write(json.dumps(record, ensure_ascii=False) + "\n")
        self.counts[side] += 1

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(src_dir: Path, out_dir: Path) -> None:
    """Move or copy the prepared files of ``src_dir`` into ``out_dir``, manifest last.

    Each file lands by an atomic rename; a ``rejected.jsonl`` left from an earlier attempt is
    removed when this set has none.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        src, dst = src_dir / name, out_dir / name
        if not src.exists():
            dst.unlink(missing_ok=True)
            continue
        tmp = out_dir / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


class PreparedCache:
    """``<root>/<key>/`` holds one finished set of prepared files (``COMPLETED`` written last)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / COMPLETED).is_file()

    def restore(self, key: str, out_dir: Path) -> dict | None:
        """Copy the cached set into ``out_dir`` and return its manifest; None on a miss."""
        if not self.has(key):
            return None
        publish(self.path(key), out_dir)
        return json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))

    def store(self, key: str, src_dir: Path) -> None:
        """Copy a finished set into the cache (temp folder, ``COMPLETED``, then rename)."""
        if self.has(key):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name in FILES:
                if (src_dir / name).exists():
                    shutil.copyfile(src_dir / name, tmp / name)
            (tmp / COMPLETED).write_text("", encoding="utf-8")
            shutil.rmtree(self.path(key), ignore_errors=True)  # an incomplete leftover
            os.replace(tmp, self.path(key))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

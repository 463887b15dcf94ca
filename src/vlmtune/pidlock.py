"""An exclusive ``fcntl`` lock on a file that holds its owner's PID.

The kernel drops the lock when its process dies, so a lock left by a killed process never
blocks; the PID in the file only names the holder (or, found in an unheld file, a process that
died holding it).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PidLock:
    held: bool  # this process holds the lock
    holder: str | None = None  # the PID holding it, when another process does
    stale: str | None = None  # the PID of a process that died holding it (now taken over)


@contextmanager
def pid_lock(path: Path, *, block: bool = False) -> Iterator[PidLock]:
    """Take the lock for the block (waiting for it with ``block``, else not); when ``held``
    is false another process has it and the block must do nothing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            yield PidLock(False, holder=_read(fd) or "unknown")
            return
        stale = _read(fd) or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield PidLock(True, stale=stale)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 64, 0).decode(errors="replace").strip()

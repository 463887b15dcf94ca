"""One job per spec at a time: an exclusive ``fcntl`` lock on ``<state_dir>/job.lock``.

The kernel releases the lock when its holder dies, so the lock of a killed job is taken over
(a PID still written in the unheld file says a job died holding it); the PID in the file
otherwise only names the holder to a second invocation.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "job.lock"


@dataclass(frozen=True)
class JobLock:
    held: bool  # this process holds the lock
    holder: str | None = None  # the PID holding it, when another process does
    stale: str | None = None  # the PID of a job that died holding it (now taken over)


@contextmanager
def job_lock(state_dir: Path) -> Iterator[JobLock]:
    """Try to take the spec's lock for the block; never waits. When ``held`` is false the
    block must do nothing."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield JobLock(False, holder=_read(fd) or "unknown")
            return
        stale = _read(fd) or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield JobLock(True, stale=stale)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 64, 0).decode(errors="replace").strip()

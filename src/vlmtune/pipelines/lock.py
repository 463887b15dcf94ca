"""One pipeline at a time per run directory: an exclusive ``fcntl`` lock on ``run.lock``.

The kernel drops the lock when its process dies, so a lock left by a killed run never blocks;
the holder's PID is written into the file only to name it in the refusal.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlmtune.errors import VlmtuneError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockedError(VlmtuneError):
    """Another vlmtune process is running in the same run directory."""


@contextmanager
def run_lock(run_dir: Path, *, wait: bool = False) -> Iterator[Path]:
    """Hold the run directory's lock for the block; refuse (or, with ``wait``, wait) while
    another process holds it."""
    path = Path(run_dir) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise RunLockedError(
                    f"{run_dir} is in use by another vlmtune run (PID {holder}); wait for it "
                    "to finish, or add --wait to start when it does") from None
            log.info("waiting for PID %s, which is running in %s", holder, run_dir)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return text or "unknown"

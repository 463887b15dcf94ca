"""One job per spec at a time: the PID lock (vlmtune.pidlock) on ``<state_dir>/job.lock``.

A second invocation gets ``held=False`` and the holder's PID; the lock of a killed job is taken
over (``stale`` names the PID that died holding it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlmtune.pidlock import PidLock as JobLock
from vlmtune.pidlock import pid_lock

LOCK_FILE = "job.lock"
__all__ = ["LOCK_FILE", "JobLock", "job_lock"]


@contextmanager
def job_lock(state_dir: Path) -> Iterator[JobLock]:
    """Try to take the spec's lock for the block; never waits. When ``held`` is false the
    block must do nothing."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with pid_lock(state_dir / LOCK_FILE) as lock:
        yield lock

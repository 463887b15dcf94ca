"""One pipeline at a time per run directory: an exclusive ``fcntl`` lock on ``run.lock``.

Built on vlmtune.pidlock: a lock left by a killed run never blocks; the holder's PID names it
in the refusal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlmtune.errors import VlmtuneError
from vlmtune.pidlock import pid_lock

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockedError(VlmtuneError):
    """Another vlmtune process is running in the same run directory."""


@contextmanager
def run_lock(run_dir: Path, *, wait: bool = False) -> Iterator[Path]:
    """Hold the run directory's lock for the block; refuse (or, with ``wait``, wait) while
    another process holds it."""
    path = Path(run_dir) / LOCK_FILE
    with pid_lock(path) as lock:
        if lock.held:
            yield path
            return
    if not wait:
        raise RunLockedError(
            f"{run_dir} is in use by another vlmtune run (PID {lock.holder}); wait for it "
            "to finish, or add --wait to start when it does")
    log.info("waiting for PID %s, which is running in %s", lock.holder, run_dir)
    with pid_lock(path, block=True):
        yield path

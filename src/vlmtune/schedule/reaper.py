"""What a killed job leaves running: its pipeline child dies with it (``PR_SET_PDEATHSIG``),
but that child's own children (``torchrun`` and its workers under ``launcher=torchrun``) do
not. The child leads its own process group, recorded in ``<state_dir>/pipeline.pgid`` while it
runs; the next job, having taken the stale lock over, kills what is left of that group before
resuming the run (only processes whose command line names vlmtune: a PID can be reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

GROUP_FILE = "pipeline.pgid"
WAIT_S = 30.0


def record_group(state_dir: Path, pgid: int) -> None:
    (state_dir / GROUP_FILE).write_text(f"{pgid}\n")


def clear_group(state_dir: Path) -> None:
    (state_dir / GROUP_FILE).unlink(missing_ok=True)


def reap_group(state_dir: Path) -> list[int]:
    """Kill (SIGKILL) the vlmtune processes left in the recorded group and wait for them to
    be gone; returns their PIDs. Call only while holding the spec's lock."""
    path = state_dir / GROUP_FILE
    try:
        pgid = int(path.read_text().strip())
    except (OSError, ValueError):
        return []
    pids = group_members(pgid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    path.unlink(missing_ok=True)
    return pids


def group_members(pgid: int) -> list[int]:
    """Live processes of group ``pgid`` whose command line mentions vlmtune (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid and b"vlmtune" in cmdline:
            found.append(int(entry.name))
    return found

"""The job's notification: the spec's ``notify`` shell command, the JSON summary on stdin."""

from __future__ import annotations

import json
import logging
import subprocess
from typing import Any

log = logging.getLogger(__name__)

FIELDS = ("spec", "outcome", "reason", "attempts", "run_id", "data_fingerprint",
          "champion_version")
TIMEOUT_S = 120


def notify(command: str | None, summary: dict[str, Any]) -> str | None:
    """Run ``command`` with ``summary`` as JSON on stdin; returns a problem, or None when it
    succeeded (or there is no command). A failing notifier never fails the job."""
    if not command:
        return None
    payload = json.dumps({k: summary.get(k) for k in FIELDS}, sort_keys=True) + "\n"
    try:
        done = subprocess.run(command, shell=True, input=payload, text=True,
                              capture_output=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"notify command timed out after {TIMEOUT_S} s: {command}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return f"notify command exited {done.returncode}: {command} {tail[0]}".strip()
    return None

"""Per-spec state: ``<state_dir>/state.json`` holds the last successful job (its data
fingerprint decides "no new data"), the trigger's file hashes and the job history."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
SUCCESS = ("promoted", "not_promoted")


@dataclass
class JobRecord:
    start: str
    end: str
    outcome: str  # promoted | not_promoted | failed | skipped
    attempts: int
    run_id: str | None
    data_fingerprint: str
    reason: str = ""
    run_dir: str | None = None
    champion_version: str | None = None


@dataclass
class ScheduleState:
    path: Path
    last_success: dict[str, Any] | None = None
    files: dict[str, list] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, state_dir: Path) -> ScheduleState:
        path = state_dir / STATE_FILE
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(path, data.get("last_success"), data.get("files", {}),
                   data.get("history", []))

    @property
    def last_fingerprint(self) -> str | None:
        return (self.last_success or {}).get("data_fingerprint")

    def record(self, job: JobRecord) -> None:
        """Append ``job`` to the history (a success also becomes ``last_success``); save."""
        entry = asdict(job)
        self.history.append(entry)
        if job.outcome in SUCCESS:
            self.last_success = entry
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"last_success": self.last_success, "files": self.files,
                                   "history": self.history}, indent=1), encoding="utf-8")
        os.replace(tmp, self.path)

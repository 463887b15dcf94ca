"""``pipeline_state.json``: which stages of a run directory have finished, and on what inputs."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATE_FILE = "pipeline_state.json"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class PipelineState:
    path: Path
    run_key: str
    mlflow_run_id: str | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path, run_key: str) -> PipelineState:
        path = run_dir / STATE_FILE
        if not path.exists():
            return cls(path, run_key)
        data = json.loads(path.read_text())
        return cls(path, data["run_key"], data.get("mlflow_run_id"), data.get("stages", {}))

    def is_done(self, stage: str) -> bool:
        return self.stages.get(stage, {}).get("status") == "done"

    def reason_to_run(self, stage: str, inputs: dict[str, Any]) -> str | None:
        """Why ``stage`` must run given its current ``inputs`` (None: it is up to date).

        The inputs are compared with those of the stage's last attempt, finished or not."""
        from vlmtune.pipelines.inputs import changed_keys

        entry = self.stages.get(stage)
        if entry is None:
            return "no previous run"
        status = entry.get("status")
        if "inputs" not in entry and status == "done":
            return "inputs not recorded by an earlier vlmtune — running"
        if self.inputs_changed(stage, inputs):
            changed = changed_keys(entry["inputs"], inputs)
            shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more"
                                              if len(changed) > 4 else "")
            return f"inputs changed ({shown}) — running"
        if status == "done":
            return None
        if status in ("running", "interrupted"):
            return "interrupted — resuming"
        return f"{status} last time — running again"

    def inputs_changed(self, stage: str, inputs: dict[str, Any]) -> bool:
        """Whether the stage's last attempt (finished or not) used other inputs."""
        from vlmtune.pipelines.inputs import digest

        entry = self.stages.get(stage, {})
        return "digest" in entry and entry["digest"] != digest(inputs)

    def mark_started(self, stage: str, inputs: dict[str, Any]) -> None:
        """Running on exactly ``inputs`` (recorded with their digest)."""
        from vlmtune.pipelines.inputs import digest

        self.mark(stage, "running", digest=digest(inputs), inputs=inputs)

    def mark_done(self, stage: str) -> None:
        """Finished, on the inputs recorded by :meth:`mark_started`."""
        self.mark(stage, "done")

    def mark(self, stage: str, status: str, **info: Any) -> None:
        entry = self.stages.setdefault(stage, {})
        entry.update(status=status, updated_at=time.strftime("%Y-%m-%dT%H:%M:%S"), **info)
        self.save()

    def save(self) -> None:
        data = {"run_key": self.run_key, "mlflow_run_id": self.mlflow_run_id,
                "stages": self.stages}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n")

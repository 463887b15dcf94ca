"""``pipeline_state.json``: which stages of a run directory have finished."""

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

    def mark(self, stage: str, status: str, **info: Any) -> None:
        entry = self.stages.setdefault(stage, {})
        entry.update(status=status, updated_at=time.strftime("%Y-%m-%dT%H:%M:%S"), **info)
        self.save()

    def save(self) -> None:
        data = {"run_key": self.run_key, "mlflow_run_id": self.mlflow_run_id,
                "stages": self.stages}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n")

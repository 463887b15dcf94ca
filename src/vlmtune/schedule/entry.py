"""What every scheduler backend runs: ``vlmtune retrain SPEC`` with absolute paths."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from vlmtune.schedule.cron import CronSchedule
from vlmtune.schedule.spec import RetrainSpec


@dataclass(frozen=True)
class ScheduleEntry:
    spec: RetrainSpec
    cron: CronSchedule
    workdir: Path  # the job runs here (relative recipe paths resolve as when installed)

    @property
    def unit_name(self) -> str:
        """``vlmtune-<name>``: the systemd unit / CronJob base name."""
        return f"vlmtune-{self.spec.name}"

    def argv(self, executable: str | None = None) -> list[str]:
        """``executable``: the vlmtune script where the job runs (a container's), else ours."""
        prefix = [executable] if executable else vlmtune_command()
        return [*prefix, "retrain", str(self.spec.path)]

    def shell_command(self, executable: str | None = None) -> str:
        return shlex.join(self.argv(executable))


def vlmtune_command() -> list[str]:
    """This environment's ``vlmtune`` script (not resolved: a venv's python is a symlink)."""
    python = os.path.abspath(sys.executable)
    script = Path(python).parent / "vlmtune"
    return [str(script)] if script.exists() else [python, "-m", "vlmtune.cli"]

"""A Hydra multirun's parent MLflow run: every job's run is its nested child.

The sweep callback opens the parent before the first job (which also creates the store once,
before any job: jobs racing to migrate one sqlite file fail) and names it in
``VLMTUNE_PARENT_RUN_ID``; a job's tracker tags its new run ``mlflow.parentRunId`` from there.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmtune.tracking.tracker import MlflowTracker

PARENT_ENV = "VLMTUNE_PARENT_RUN_ID"


def start_parent(uri: str, experiment_name: str, name: str) -> str:
    """Create the sweep's parent run and make it the parent of the runs this process opens."""
    tracker = MlflowTracker(uri, experiment_name)
    run_id = tracker.start(name, tags={"vlmtune.sweep": "parent"})
    os.environ[PARENT_ENV] = run_id
    return run_id


def end_parent(uri: str, experiment_name: str, run_id: str, status: str,
               summary: Path | None = None) -> None:
    """Attach the sweep summary (if any), close the parent with ``status``."""
    os.environ.pop(PARENT_ENV, None)
    tracker = MlflowTracker(uri, experiment_name)
    tracker.run_id = run_id
    if summary is not None and summary.exists():
        tracker.log_artifact(summary)
    tracker.end(status)

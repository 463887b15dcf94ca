"""One MLflow run per pipeline run: params, per-step metrics, tags, artifacts, final status.

Uses ``MlflowClient`` with an explicit run id (no global "active run"), so a resumed pipeline
reopens the same run and a stage can log from any thread.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Protocol

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)
for _noisy in ("mlflow", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
BATCH = 100  # at most 100 params per log_batch call
# The key's last part names a secret (hf_token, api_key ...), not e.g. max_new_tokens.
SECRET_KEY = re.compile(r"(^|[._])(password|secret|api_key|credential|\w*token)$", re.IGNORECASE)
FINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")


class Tracker(Protocol):
    run_id: str | None

    def start(self, run_name: str, *, run_id: str | None = None,
              tags: dict[str, str] | None = None) -> str | None: ...
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_metric_steps(self, series: dict[str, list[tuple[int, float]]]) -> None: ...
    def last_step(self, key: str) -> int | None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, name: str, *, digest: str, source: str, context: str,
                    profile: dict[str, Any]) -> None: ...
    def end(self, status: str) -> None: ...


class NullTracker:
    """Tracking switched off (``tracking=disabled``): every call does nothing."""

    run_id: str | None = None

    def start(self, run_name: str, *, run_id: str | None = None,
              tags: dict[str, str] | None = None) -> str | None:
        return None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_metric_steps(self, series: dict[str, list[tuple[int, float]]]) -> None: ...

    def last_step(self, key: str) -> int | None:
        return None

    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...
    def log_dataset(self, name: str, *, digest: str, source: str, context: str,
                    profile: dict[str, Any]) -> None: ...
    def end(self, status: str) -> None: ...


class MlflowTracker:
    def __init__(self, uri: str, experiment_name: str) -> None:
        self.uri = uri
        self.experiment_name = experiment_name
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None

    def start(self, run_name: str, *, run_id: str | None = None,
              tags: dict[str, str] | None = None) -> str:
        """Reopen ``run_id`` when it exists (a resumed pipeline), else create a new run."""
        if run_id and self._exists(run_id):
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            log.info("reopened MLflow run %s", run_id)
        else:
            run = self.client.create_run(self._experiment_id(), run_name=run_name)
            self.run_id = run.info.run_id
            log.info("created MLflow run %s in experiment %s", self.run_id, self.experiment_name)
        if tags:
            self.set_tags(tags)
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        """Log flattened params (values cut to MLflow's limit, secrets redacted), 100 a call.

        A reopened run already has them: those keys are skipped (a changed value is reported).
        """
        existing = self.client.get_run(self._run()).data.params
        items = []
        for key, value in sorted(params.items()):
            text = "***" if SECRET_KEY.search(key) else str(value)[:MAX_PARAM_VALUE]
            if key in existing:
                if existing[key] != text:
                    log.warning("param %s changed (%r -> %r); MLflow keeps the first value",
                                key, existing[key], text)
                continue
            items.append(Param(key, text))
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self._run(), params=items[i:i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self._run(), metrics=batch[i:i + 1000])

    def log_metric_steps(self, series: dict[str, list[tuple[int, float]]]) -> None:
        """Many steps of several metrics in as few calls as MLflow allows (1000 a call)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, rows in series.items() for step, v in rows]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self._run(), metrics=batch[i:i + 1000])

    def last_step(self, key: str) -> int | None:
        """The highest step logged for metric ``key`` in this run (None: none)."""
        history = self.client.get_metric_history(self._run(), key)
        return max((m.step for m in history), default=None)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self._run(), tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self._run(), str(path), artifact_path)
        else:
            self.client.log_artifact(self._run(), str(path), artifact_path)

    def log_dataset(self, name: str, *, digest: str, source: str, context: str,
                    profile: dict[str, Any]) -> None:
        """Record a dataset as an input of the run (MLflow's dataset lineage)."""
        dataset = Dataset(name=name, digest=digest[:36], source_type="local",
                          source=json.dumps({"uri": source}), profile=json.dumps(profile))
        tags = [InputTag("mlflow.data.context", context)]
        self.client.log_inputs(self._run(), datasets=[DatasetInput(dataset, tags)])

    def end(self, status: str) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}, got {status!r}")
        if self.run_id:
            self.client.set_terminated(self.run_id, status=status)
            log.info("MLflow run %s ended: %s", self.run_id, status)

    def _run(self) -> str:
        if not self.run_id:
            raise RuntimeError("start() the tracker before logging")
        return self.run_id

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(self.experiment_name,
                                             artifact_location=_artifact_location(self.uri))


def _artifact_location(uri: str) -> str | None:
    """Keep a local store's artifacts beside its database (``mlartifacts/``)."""
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None


class StepMetrics:
    """Buffers per-step metrics and writes them in batches (every ``every_s`` seconds, and on
    ``flush``): one sqlite write per step costs ~9 ms, more than a tiny model's whole step.

    Every step reaches the tracker once: the train stage flushes before each checkpoint (a
    kill loses only steps after the newest one), and steps the run already holds are dropped,
    so the steps a resumed run trains again between its checkpoint and the last flush before
    the kill are not logged twice. (An exact resume computes the same values for them.)
    """

    def __init__(self, tracker: Tracker, every_s: float = 5.0) -> None:
        self.tracker, self.every_s = tracker, every_s
        self._rows: list[tuple[int, dict[str, float]]] = []
        self._last = time.monotonic()
        self._held: dict[str, int] = {}  # metric → the last step the run held before us

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self._rows.append((step, dict(metrics)))
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        rows, self._rows, self._last = self._rows, [], time.monotonic()
        by_step: dict[str, list[tuple[int, float]]] = {}
        for step, metrics in rows:
            for key, value in metrics.items():
                if step > self._held_until(key):
                    by_step.setdefault(key, []).append((step, value))
        if by_step:
            self.tracker.log_metric_steps(by_step)

    def _held_until(self, key: str) -> int:
        if key not in self._held:
            self._held[key] = self.tracker.last_step(key) or 0
        return self._held[key]


def open_tracker(enabled: bool, uri: str, experiment_name: str) -> Tracker:
    return MlflowTracker(uri, experiment_name) if enabled else NullTracker()



def run_status(uri: str, run_id: str) -> str:
    """The run's status name as stored (for reports and tests)."""
    return RunStatus.to_string(RunStatus.from_string(MlflowClient(uri).get_run(run_id).info.status))

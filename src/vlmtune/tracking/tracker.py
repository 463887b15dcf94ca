"""One MLflow run per pipeline run: params, per-step metrics, tags, artifacts, final status.

Uses ``MlflowClient`` with an explicit run id (no global "active run"), so a resumed pipeline
reopens the same run and a stage can log from any thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
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
# A store that stops answering (a remote server restarting): writes are retried for this long
# (seconds) before they fail; buffered step metrics are kept and retried on every flush.
RETRY_S = float(os.environ.get("VLMTUNE_TRACKING_RETRY_S", "120"))
RETRY_WAIT_S = 2.0
# What a store that went away raises (requests' errors are OSErrors).
UNREACHABLE = (MlflowException, OSError)


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
    """``system_metrics``: sample ``system/…`` metrics (psutil; GPU with pynvml) while the run
    is open; ``retry_s``: how long a write is retried while the store does not answer."""

    def __init__(self, uri: str, experiment_name: str, *, system_metrics: bool = False,
                 retry_s: float = RETRY_S) -> None:
        self.uri = uri
        self.experiment_name = experiment_name
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id: str | None = None
        self.system_metrics, self.retry_s = system_metrics, retry_s
        self._monitor = None
        self._buffers: list[StepMetrics] = []  # flushed (with retries) before the run ends

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
            parent = os.environ.get("VLMTUNE_PARENT_RUN_ID")  # a sweep job (tracking.sweep)
            if parent and parent != self.run_id:
                tags = {"mlflow.parentRunId": parent, **(tags or {})}
            log.info("created MLflow run %s in experiment %s", self.run_id, self.experiment_name)
        if tags:
            self.set_tags(tags)
        if self.system_metrics:
            self._start_system_metrics(resume=bool(run_id and run_id == self.run_id))
        return self.run_id

    def _start_system_metrics(self, resume: bool) -> None:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self._run(), resume_logging=resume,
                                             tracking_uri=self.uri)
        self._monitor.start()

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
            self._retrying(self.client.log_batch, self._run(), params=items[i:i + BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self._retrying(self.client.log_batch, self._run(), metrics=batch[i:i + 1000])

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
        self._retrying(self.client.log_batch, self._run(),
                       tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        log_files = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        self._retrying(log_files, self._run(), str(path), artifact_path)

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
        for buffer in self._buffers:
            buffer.flush(final=True)
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if self.run_id:
            self._retrying(self.client.set_terminated, self.run_id, status=status)
            log.info("MLflow run %s ended: %s", self.run_id, status)

    def add_buffer(self, buffer: StepMetrics) -> None:
        """Flush ``buffer`` (retrying for ``retry_s``) before the run ends."""
        if buffer not in self._buffers:
            self._buffers.append(buffer)

    def _retrying(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``call``, retried every few seconds for ``retry_s`` while the store is away."""
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return call(*args, **kwargs)
            except UNREACHABLE as err:
                if time.monotonic() >= deadline or not _transient(err):
                    raise
                log.warning("MLflow store %s did not answer (%s); retrying", self.uri,
                            _short(err))
                time.sleep(RETRY_WAIT_S)

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

    A store that does not answer (a remote server restarting) does not stop training: what
    could not be written stays buffered and goes with the next flush; the tracker's last
    flush, before the run ends, retries for ``final_retry_s``.
    """

    def __init__(self, tracker: Tracker, every_s: float = 5.0,
                 final_retry_s: float | None = None) -> None:
        self.tracker, self.every_s = tracker, every_s
        self.final_retry_s = RETRY_S if final_retry_s is None else final_retry_s
        self._rows: list[tuple[int, dict[str, float]]] = []
        self._unsent: list[tuple[str, int, float]] = []  # (metric, step, value), in order
        self._last = time.monotonic()
        self._held: dict[str, int] = {}  # metric → the last step the run held before us
        if hasattr(tracker, "add_buffer"):
            tracker.add_buffer(self)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self._rows.append((step, dict(metrics)))
        if time.monotonic() - self._last >= self.every_s:
            self.flush()

    @property
    def pending(self) -> int:
        """Values not written yet."""
        return len(self._unsent) + sum(len(m) for _, m in self._rows)

    def flush(self, final: bool = False) -> bool:
        """Write what is buffered; False when the store did not take all of it (kept).
        ``final``: retry for ``final_retry_s`` first."""
        deadline = time.monotonic() + (self.final_retry_s if final else 0.0)
        while True:
            try:
                self._write()
                return True
            except UNREACHABLE as err:
                if time.monotonic() >= deadline:
                    log.warning("MLflow store did not take %d buffered metric values (%s); "
                                "%s", self.pending, _short(err),
                                "giving up" if final else "kept for the next flush")
                    return False
                time.sleep(RETRY_WAIT_S)
            finally:
                self._last = time.monotonic()

    def _write(self) -> None:
        rows, self._rows = self._rows, []
        for step, metrics in rows:
            self._unsent += [(key, step, value) for key, value in metrics.items()]
        while self._unsent:
            chunk = self._unsent[:1000]
            by_step: dict[str, list[tuple[int, float]]] = {}
            for key, step, value in chunk:
                if step > self._held_until(key):
                    by_step.setdefault(key, []).append((step, value))
            if by_step:
                self.tracker.log_metric_steps(by_step)
            del self._unsent[:len(chunk)]

    def _held_until(self, key: str) -> int:
        if key not in self._held:
            self._held[key] = self.tracker.last_step(key) or 0
        return self._held[key]


def open_tracker(enabled: bool, uri: str, experiment_name: str, *,
                 system_metrics: bool = False) -> Tracker:
    return (MlflowTracker(uri, experiment_name, system_metrics=system_metrics) if enabled
            else NullTracker())


def _transient(err: BaseException) -> bool:
    """A store that is away or overloaded (not a request MLflow refused)."""
    if isinstance(err, OSError):
        return True
    code = getattr(err, "error_code", "")
    return code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "") or "retries" in str(err)


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]



def run_status(uri: str, run_id: str) -> str:
    """The run's status name as stored (for reports and tests)."""
    return RunStatus.to_string(RunStatus.from_string(MlflowClient(uri).get_run(run_id).info.status))

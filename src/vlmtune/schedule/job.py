"""One retraining job: lock → trigger → pipeline (in a subprocess, retried) → gate outcome →
history, MLflow tags, notification.

Read order is run order (:func:`run_job`). Nothing here imports torch, transformers or mlflow
before the "no new data" decision; the pipeline runs as ``python -m vlmtune.cli run …`` so a
crash stays in the child and a retry starts clean, resuming the interrupted run (same config
and data → same run key → the finished stages are skipped, training resumes its checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vlmtune.schedule.lock import job_lock
from vlmtune.schedule.notify import notify
from vlmtune.schedule.reaper import clear_group, reap_group, record_group
from vlmtune.schedule.spec import RetrainSpec, gate_overrides
from vlmtune.schedule.state import JobRecord, ScheduleState
from vlmtune.schedule.trigger import fingerprint_root

log = logging.getLogger(__name__)

RESULT_ENV = "VLMTUNE_RESULT_FILE"  # where ``vlmtune run`` writes its result (run dir, ids)
REGISTRY_FILE = "registry.json"  # the register stage's gate decision, in the run directory
DECISIONS = ("promoted", "not_promoted")
TAIL_LINES = 40


@dataclass
class JobOutcome:
    outcome: str  # promoted | not_promoted | failed | skipped
    reason: str
    attempts: int = 0
    run_id: str | None = None
    run_dir: str | None = None
    data_fingerprint: str = ""
    champion_version: str | None = None
    tracking_uri: str | None = None  # where the run is tracked (None: tracking disabled)

    terminated: bool = False  # stopped by SIGTERM (not retried)

    @property
    def exit_code(self) -> int:
        if self.terminated:
            return 128 + signal.SIGTERM
        return 1 if self.outcome == "failed" else 0


class JobTerminated(Exception):
    """SIGTERM (or Ctrl-C) reached the job: the pipeline child was asked to stop; no retry."""

    attempts = 0


@dataclass
class Attempt:
    """What one pipeline subprocess left: its result file (None if it failed) and why."""

    returncode: int
    result: dict[str, Any] | None
    reason: str


def run_job(spec: RetrainSpec, *, echo: Callable[[str], None] = print,
            sleep: Callable[[float], None] = time.sleep) -> JobOutcome:
    """Run ``spec`` once (idempotently) and return its outcome; see the module docstring."""
    with job_lock(spec.state_dir) as lock:
        if not lock.held:
            outcome = JobOutcome("skipped", f"another retrain job of {spec.name} is running "
                                 f"(PID {lock.holder}); not starting a second one")
            echo(f"retrain {spec.name}: {outcome.reason}")
            _notify(spec, outcome, echo)
            return outcome
        if lock.stale:
            echo(f"retrain {spec.name}: taking over the lock of PID {lock.stale}, which died "
                 "holding it")
        if left := reap_group(spec.state_dir):
            echo(f"retrain {spec.name}: killed {len(left)} process(es) the dead job left "
                 f"running (PIDs {', '.join(map(str, left))})")
        return _locked_job(spec, echo, sleep)


def _locked_job(spec: RetrainSpec, echo: Callable[[str], None],
                sleep: Callable[[float], None]) -> JobOutcome:
    state = ScheduleState.load(spec.state_dir)
    start = _now()
    fingerprint = fingerprint_root(spec.trigger.root, state.files)
    state.files = fingerprint.files
    champion = (state.last_success or {}).get("champion_version")
    if spec.trigger.when == "changed" and fingerprint.digest == state.last_fingerprint:
        last = state.last_success or {}
        outcome = JobOutcome("skipped", f"no new data in {spec.trigger.root} since the job of "
                             f"{last.get('end')} (run {last.get('run_id')})",
                             data_fingerprint=fingerprint.digest, champion_version=champion)
        echo(f"retrain {spec.name}: {outcome.reason}")
    else:
        why = ("trigger.when=always" if spec.trigger.when == "always" else
               "first job" if state.last_fingerprint is None else "new data")
        echo(f"retrain {spec.name}: {why} in {spec.trigger.root} (fingerprint "
             f"{fingerprint.digest[:12]}, {fingerprint.hashed} file(s) read); running the "
             "pipeline")
        try:
            outcome = _run_with_retries(spec, echo, sleep)
        except JobTerminated as stop:
            outcome = JobOutcome("failed", "terminated (SIGTERM or Ctrl-C); the next job resumes "
                                 "the run",
                                 attempts=stop.attempts, terminated=True)
        outcome.data_fingerprint = fingerprint.digest
        if outcome.outcome == "failed":
            outcome.champion_version = champion
    state.record(JobRecord(start=start, end=_now(), outcome=outcome.outcome,
                           attempts=outcome.attempts, run_id=outcome.run_id,
                           data_fingerprint=outcome.data_fingerprint, reason=outcome.reason,
                           run_dir=outcome.run_dir, champion_version=outcome.champion_version))
    if outcome.outcome != "skipped":
        echo(f"retrain {spec.name}: {outcome.outcome} after {outcome.attempts} attempt(s): "
             f"{outcome.reason}")
        _tag_run(spec, outcome, echo)
    _notify(spec, outcome, echo)
    return outcome


def _run_with_retries(spec: RetrainSpec, echo: Callable[[str], None],
                      sleep: Callable[[float], None]) -> JobOutcome:
    """Every failure (data errors too) is retried ``retries.count`` times, the delay doubling;
    each attempt resumes the previous one's run."""
    total = spec.retries.count + 1
    result_file = spec.state_dir / "attempt.json"
    failed = JobOutcome("failed", "", attempts=total)
    for attempt in range(1, total + 1):
        try:
            done = run_attempt(spec, result_file)
        except JobTerminated as stop:
            stop.attempts = attempt
            raise
        if done.result is not None:
            outcome = gate_outcome(Path(done.result["run_dir"]))
            outcome.attempts = attempt
            failed.run_id = outcome.run_id = done.result.get("mlflow_run_id")
            failed.run_dir = outcome.run_dir = done.result["run_dir"]
            failed.tracking_uri = outcome.tracking_uri = done.result.get("tracking_uri")
            if outcome.outcome != "failed":
                return outcome
            reason = outcome.reason
        else:
            reason = done.reason
        echo(f"retrain {spec.name}: attempt {attempt}/{total} failed: {reason}")
        if attempt < total:
            delay = spec.retries.backoff_s * 2 ** (attempt - 1)
            echo(f"retrain {spec.name}: retrying in {delay:g} s")
            sleep(delay)
    failed.reason = reason
    return failed


def pipeline_command(spec: RetrainSpec) -> list[str]:
    return [sys.executable, "-m", "vlmtune.cli", "run", *spec.overrides,
            *gate_overrides(spec.gate)]


def run_attempt(spec: RetrainSpec, result_file: Path) -> Attempt:
    """Run the pipeline once in a child that dies with this process; its stdout passes
    through, its stderr too (the tail is kept to say why it failed)."""
    result_file.unlink(missing_ok=True)
    env = {**os.environ, RESULT_ENV: str(result_file)}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    # its own process group (recorded): what it starts can be found if this job is killed
    child = subprocess.Popen(pipeline_command(spec), env=env, stderr=subprocess.PIPE,
                             text=True, errors="replace", preexec_fn=_die_with_parent,
                             start_new_session=True)
    record_group(spec.state_dir, child.pid)
    terminated = []

    def stop(signum, frame) -> None:
        terminated.append(signum)
        child.terminate()  # the pipeline records its MLflow run as KILLED and exits

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert child.stderr is not None
        for line in child.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reap_group(spec.state_dir)  # a child that died abnormally may leave workers behind
    clear_group(spec.state_dir)
    if terminated:
        raise JobTerminated()
    if returncode == 0 and result_file.exists():
        return Attempt(0, json.loads(result_file.read_text(encoding="utf-8")), "")
    return Attempt(returncode, None, _failure_reason(returncode, list(tail)))


def gate_outcome(run_dir: Path) -> JobOutcome:
    """The register stage's decision in ``<run_dir>/registry.json`` as the job's outcome."""
    path = run_dir / REGISTRY_FILE
    if not path.exists():
        return JobOutcome("failed", f"{path} is missing: the recipe's pipeline has no register "
                          "stage (pipeline.stages must end with register)")
    try:
        decision = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        return JobOutcome("failed", f"{path}: not valid JSON ({err})")
    verdict = decision.get("decision")
    if verdict not in DECISIONS:
        return JobOutcome("failed", f"{path}: decision={verdict!r} is neither promoted nor "
                          "not_promoted")
    model = decision.get("model")
    if verdict == "promoted":
        champion = decision.get("version")
        reason = decision.get("reason") or f"{model} version {champion} is the new champion"
    else:
        champion = decision.get("champion_version")
        reason = decision.get("reason") or f"{model} version {champion} stays champion"
    return JobOutcome(verdict, str(reason), champion_version=_text(champion))


def _failure_reason(returncode: int, tail: list[str]) -> str:
    """The child's own error line (``vlmtune: error: …``, else the traceback's last line)."""
    for line in reversed(tail):
        if line.startswith("vlmtune: error:"):
            return f"exit {returncode}: {line.removeprefix('vlmtune: error:').strip()}"
    lines = [line for line in tail if line.strip()]
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit {returncode}: {lines[-1].strip() if lines else '(no output)'}"


def _tag_run(spec: RetrainSpec, outcome: JobOutcome, echo: Callable[[str], None]) -> None:
    """``vlmtune.schedule`` / ``vlmtune.schedule.outcome`` tags on the job's MLflow run."""
    uri = outcome.tracking_uri
    if not outcome.run_id or not uri:
        return
    from vlmtune.tracking.tags import set_run_tags

    try:
        set_run_tags(uri, outcome.run_id, {"vlmtune.schedule": spec.name,
                                           "vlmtune.schedule.outcome": outcome.outcome})
    except Exception as err:  # noqa: BLE001 - the job's outcome stands; say why tags are absent
        echo(f"retrain {spec.name}: could not tag MLflow run {outcome.run_id}: {err}")


def _notify(spec: RetrainSpec, outcome: JobOutcome, echo: Callable[[str], None]) -> None:
    problem = notify(spec.notify, {
        "spec": spec.name, "outcome": outcome.outcome, "reason": outcome.reason,
        "attempts": outcome.attempts, "run_id": outcome.run_id,
        "data_fingerprint": outcome.data_fingerprint,
        "champion_version": outcome.champion_version})
    if problem:
        echo(f"retrain {spec.name}: {problem}")


def _die_with_parent() -> None:
    """Linux: the pipeline child gets SIGKILL when the job process dies (a killed job leaves
    no orphan holding the run directory)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


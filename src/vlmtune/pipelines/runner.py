"""Run a recipe's stages in its run directory, inside one tracked MLflow run.

Finished stages are skipped (and said so); an interrupted stage resumes. The MLflow run ends
FINISHED on success, FAILED on an exception and KILLED on SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import logging
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vlmtune.config import RecipeConfig, flatten, to_container
from vlmtune.pipelines import convert, evaluate, ingest, train
from vlmtune.pipelines.context import RunContext, open_run
from vlmtune.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)

STAGES: dict[str, Callable[[RunContext], None]] = {
    "ingest": ingest.run,
    "train": train.run,
    "convert": convert.run,
    "evaluate": evaluate.run,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is recorded as KILLED."""


@dataclass
class PipelineResult:
    run_dir: Path
    run_key: str
    mlflow_run_id: str | None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_pipeline(recipe: RecipeConfig, stages: list[str] | None = None) -> PipelineResult:
    """Run ``stages`` (default: the recipe's pipeline) and return where everything landed."""
    stages = list(stages or recipe.pipeline.stages)
    tracker = open_tracker(recipe.tracking.enabled, recipe.tracking.uri, recipe.experiment_name)
    ctx = open_run(recipe, tracker)
    result = PipelineResult(ctx.run_dir, ctx.run_key, None)
    with _tracked(ctx) as run_id:
        result.mlflow_run_id = run_id
        for stage in stages:
            if ctx.state.is_done(stage):
                log.info("stage %s: already finished in %s, skipping", stage, ctx.run_dir)
                result.skipped.append(stage)
                continue
            log.info("stage %s: starting", stage)
            ctx.tracker.set_tags({"vlmtune.stage": stage})
            ctx.state.mark(stage, "running")
            try:
                STAGES[stage](ctx)
            except KeyboardInterrupt:
                ctx.state.mark(stage, "interrupted")
                raise
            except BaseException:
                ctx.state.mark(stage, "failed")
                raise
            ctx.state.mark(stage, "done")
            result.ran.append(stage)
    return result


@contextmanager
def _tracked(ctx: RunContext) -> Iterator[str | None]:
    """Open (or reopen) the run's MLflow run and always close it with the right status."""
    tracker: Tracker = ctx.tracker
    recipe = ctx.recipe
    run_id = tracker.start(ctx.run_key, run_id=ctx.state.mlflow_run_id, tags={
        "vlmtune.run_key": ctx.run_key,
        "vlmtune.data_fingerprint": ctx.data_fingerprint,
        "vlmtune.git_sha": _git_sha(),
        "vlmtune.run_dir": str(ctx.run_dir.resolve()),
    })
    if run_id and run_id != ctx.state.mlflow_run_id:
        ctx.state.mlflow_run_id = run_id
        ctx.state.save()
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_terminated)
    status = "FAILED"
    try:
        tracker.log_params(flatten(to_container(recipe)))
        tracker.log_artifact(ctx.run_dir / "config.yaml")
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        tracker.end(status)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"received signal {signum}")


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"

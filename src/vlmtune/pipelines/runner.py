"""Run a recipe's stages in its run directory, inside one tracked MLflow run.

Every check runs first (preflight, tracking server), then the run directory is locked (one
pipeline at a time) and each stage runs unless it finished on exactly its current inputs
(``pipelines.inputs``); the log says why a stage runs. The MLflow run ends FINISHED on success,
FAILED on an exception and KILLED on SIGTERM or Ctrl-C. vlmtune's log is also written to
``logs/vlmtune.log``.
"""

from __future__ import annotations

import logging
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vlmtune.config import RecipeConfig, flatten, to_container
from vlmtune.pipelines import convert, evaluate, ingest, register, train
from vlmtune.pipelines.context import RunContext, locate_run, open_run
from vlmtune.pipelines.inputs import stage_inputs
from vlmtune.pipelines.lock import run_lock
from vlmtune.pipelines.preflight import preflight
from vlmtune.tracking import Tracker, check_reachable, open_tracker

log = logging.getLogger(__name__)

STAGES: dict[str, Callable[[RunContext], None]] = {
    "ingest": ingest.run,
    "train": train.run,
    "convert": convert.run,
    "evaluate": evaluate.run,
    "register": register.run,
}
# Outputs a stage rewrites from scratch when it reruns on inputs other than its last attempt's
# (resumed on the same inputs it keeps them: evaluate reuses a model already scored).
STALE_OUTPUTS = {"evaluate": ("eval", "report.md")}
# Overrides that say where a run is stored or observed: left out of the MLflow run name.
UNNAMED_OVERRIDES = ("experiment", "output_root", "cache_dir", "tracking", "hydra")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run is recorded as KILLED."""


@dataclass
class PipelineResult:
    run_dir: Path
    run_key: str
    mlflow_run_id: str | None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_pipeline(recipe: RecipeConfig, stages: list[str] | None = None, *,
                 overrides: Sequence[str] = (), wait: bool = False) -> PipelineResult:
    """Run ``stages`` (default: the recipe's pipeline) and return where everything landed.

    ``overrides``: the command line's (they name the MLflow run); ``wait``: wait for another
    process holding the run directory instead of refusing.
    """
    stages = list(stages or recipe.pipeline.stages)
    if recipe.tracking.enabled:
        check_reachable(recipe.tracking.uri)
    preflight(recipe, stages)
    where = locate_run(recipe)
    with run_lock(where.run_dir, wait=wait), _log_to(where.run_dir / "logs" / "vlmtune.log"):
        tracker = open_tracker(recipe.tracking.enabled, recipe.tracking.uri,
                               recipe.experiment_name,
                               system_metrics=recipe.tracking.system_metrics)
        ctx = open_run(recipe, where, tracker)
        result = PipelineResult(ctx.run_dir, ctx.run_key, None)
        name = run_name(recipe.experiment_name, overrides, ctx.run_key)
        with _tracked(ctx, name) as run_id:
            result.mlflow_run_id = run_id
            for stage in stages:
                _run_stage(ctx, stage, result)
    return result


def _run_stage(ctx: RunContext, stage: str, result: PipelineResult) -> None:
    """Run ``stage`` unless it finished on exactly its current inputs; say why it runs."""
    inputs = stage_inputs(ctx, stage)
    reason = ctx.state.reason_to_run(stage, inputs)
    if reason is None:
        log.info("stage %s: inputs unchanged since it finished in %s, skipping", stage,
                 ctx.run_dir)
        result.skipped.append(stage)
        return
    log.info("stage %s: %s", stage, reason)
    if ctx.state.inputs_changed(stage, inputs):
        for name in STALE_OUTPUTS.get(stage, ()):
            path = ctx.run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    ctx.tracker.set_tags({"vlmtune.stage": stage})
    ctx.state.mark_started(stage, inputs)
    try:
        STAGES[stage](ctx)
    except KeyboardInterrupt:
        ctx.state.mark(stage, "interrupted")
        raise
    except BaseException:
        ctx.state.mark(stage, "failed")
        raise
    ctx.state.mark_done(stage)
    result.ran.append(stage)


def run_name(experiment: str, overrides: Sequence[str], run_key: str) -> str:
    """``demo method.lora.r=8 · 3fa2c1``: the experiment, the overrides that say what this
    run computes, and the start of its run key."""
    shown = [o.lstrip("+~") for o in overrides
             if o.lstrip("+~").split("=", 1)[0].split(".")[0].split("/")[0]
             not in UNNAMED_OVERRIDES]
    return " ".join([experiment, *shown, "·", run_key[:6]])[:250]


@contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Copy the ``vlmtune`` logger's records into ``path`` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("vlmtune")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


@contextmanager
def _tracked(ctx: RunContext, name: str) -> Iterator[str | None]:
    """Open (or reopen) the run's MLflow run and always close it with the right status."""
    tracker: Tracker = ctx.tracker
    recipe = ctx.recipe
    run_id = tracker.start(name, run_id=ctx.state.mlflow_run_id, tags={
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

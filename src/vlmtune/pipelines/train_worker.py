"""One torchrun worker of the train stage: ``python -m vlmtune.pipelines.train_worker RUN_DIR
RUN_KEY`` (started by :func:`vlmtune.pipelines.train.run` under ``launcher=torchrun``).

It reads the resolved recipe the pipeline wrote to ``RUN_DIR/config.yaml``, joins the process
group and trains its share of every batch. Rank 0 logs the step metrics into the pipeline's
MLflow run (the pipeline opened it and closes it) and writes checkpoints and the adapter;
the other ranks write nothing.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf

from vlmtune.config import RecipeConfig, validate
from vlmtune.config.schema import resolve_device
from vlmtune.pipelines import train
from vlmtune.pipelines.context import RunContext
from vlmtune.pipelines.state import PipelineState
from vlmtune.tracking import NullTracker, Tracker, open_tracker
from vlmtune.training import distributed


def load_recipe(run_dir: Path) -> RecipeConfig:
    """The recipe exactly as the pipeline resolved it for this run."""
    cfg = OmegaConf.merge(OmegaConf.structured(RecipeConfig), OmegaConf.load(run_dir /
                                                                             "config.yaml"))
    return validate(cfg)


def worker_tracker(recipe: RecipeConfig, run_id: str | None) -> Tracker:
    """Rank 0: the pipeline's MLflow run, attached by id (never started or ended here)."""
    if not (distributed.is_main() and recipe.tracking.enabled and run_id):
        return NullTracker()
    tracker = open_tracker(True, recipe.tracking.uri, recipe.experiment_name)
    tracker.run_id = run_id
    return tracker


def main(argv: list[str] | None = None) -> int:
    run_dir, run_key = (sys.argv[1:] if argv is None else argv)[:2]
    distributed.die_with_parent()  # a killed job leaves no worker training on
    run_dir_path = Path(run_dir)
    recipe = load_recipe(run_dir_path)
    device = distributed.init(resolve_device(recipe.device))
    logging.basicConfig(level=logging.WARNING, format=f"[rank {distributed.rank()}] "
                        "%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vlmtune").setLevel(logging.INFO if distributed.is_main()
                                          else logging.WARNING)
    try:
        state = PipelineState.load(run_dir_path, run_key)
        ctx = RunContext(recipe, run_dir_path, run_key, "", state,
                         worker_tracker(recipe, state.mlflow_run_id))
        train.run_here(ctx, device)
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

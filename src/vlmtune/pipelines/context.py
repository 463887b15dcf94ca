"""What every stage receives: the validated recipe, the run directory and the tracker."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune.config import RecipeConfig, run_key, to_yaml
from vlmtune.config.schema import DatasetConfig
from vlmtune.data.ingest import open_source, source_fingerprint
from vlmtune.data.synthetic import generate_foodie_synth
from vlmtune.errors import StageError
from vlmtune.pipelines.state import PipelineState, write_atomic
from vlmtune.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    recipe: RecipeConfig
    run_dir: Path
    run_key: str
    data_fingerprint: str
    state: PipelineState
    tracker: Tracker
    model_identity: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    def manifest(self) -> dict:
        path = self.data_dir / "manifest.json"
        if not path.exists():
            raise StageError(f"{path} is missing: run the ingest stage first "
                             "(vlmtune ingest <same overrides>)")
        return json.loads(path.read_text())

    def require(self, relpath: str, stage: str) -> Path:
        path = self.run_dir / relpath
        if not path.exists():
            raise StageError(f"{path} is missing: run the {stage} stage first "
                             f"(vlmtune {stage} <same overrides>)")
        return path


def prepare_source(cfg: DatasetConfig) -> tuple[Path, str]:
    """Make sure the dataset source exists (generating synthetic data) and fingerprint its
    content: the data file(s) and every image the records name (nothing outside the root)."""
    if cfg.synthetic is not None:
        spec = cfg.synthetic
        generate_foodie_synth(Path(cfg.root), seed=spec.seed, num_dishes=spec.num_dishes,
                              photos_per_dish=spec.photos_per_dish)
    source = open_source(cfg)
    return source.root, source_fingerprint(source)


@dataclass
class RunLocation:
    """Where a recipe's run lives, and what its key was derived from."""

    run_dir: Path
    run_key: str
    data_fingerprint: str
    model_identity: dict[str, Any]


def locate_run(recipe: RecipeConfig) -> RunLocation:
    """Fingerprint the data and the model, derive the run key, create the run directory."""
    from vlmtune.pipelines.inputs import model_identity

    _, fingerprint = prepare_source(recipe.dataset)
    identity = model_identity(recipe.model.path, recipe.model.build)
    key = run_key(recipe, fingerprint, identity)
    run_dir = Path(recipe.output_root) / recipe.experiment_name / key
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunLocation(run_dir, key, fingerprint, identity)


def open_run(recipe: RecipeConfig, where: RunLocation, tracker: Tracker) -> RunContext:
    """Reopen the (locked) run directory: write the resolved recipe, load the stage state."""
    write_atomic(where.run_dir / "config.yaml", to_yaml(recipe))
    state = PipelineState.load(where.run_dir, where.run_key)
    return RunContext(recipe, where.run_dir, where.run_key, where.data_fingerprint, state,
                      tracker, where.model_identity)

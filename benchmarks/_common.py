"""What the benchmarks share: quiet logging, and the demo's synthetic data ingested."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import transformers

from vlmtune.config import RecipeConfig, compose_recipe, validate
from vlmtune.data.ingest import IngestResult, ingest_dataset
from vlmtune.data.synthetic import generate_foodie_synth


def quiet() -> None:
    """No progress bars, warnings or log lines between a benchmark's figures."""
    os.environ["VLMTUNE_PROGRESS"] = "0"
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    transformers.utils.logging.disable_progress_bar()


def demo_ingested(cache: Path, *overrides: str) -> tuple[RecipeConfig, IngestResult]:
    """``experiment=demo`` (plus ``overrides``) with its cache in ``cache``, and its
    synthetic FoodieQA data generated and ingested into ``cache/ingested``."""
    recipe = validate(compose_recipe(["experiment=demo", f"cache_dir={cache}", *overrides]))
    synth = recipe.dataset.synthetic
    generate_foodie_synth(Path(recipe.dataset.root), seed=synth.seed,
                          num_dishes=synth.num_dishes, photos_per_dish=synth.photos_per_dish)
    return recipe, ingest_dataset(recipe.dataset, cache / "ingested")

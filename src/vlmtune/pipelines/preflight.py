"""Checks run before any work starts: everything that can fail early does, once."""

from __future__ import annotations

import itertools
import logging

from vlmtune.config import RecipeConfig
from vlmtune.config.schema import BenchmarkConfig, DatasetConfig
from vlmtune.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_STAGES = ("train", "convert", "evaluate")
PEEK_RECORDS = 5  # records read from the source to decide whether the benchmark fits it


def preflight(recipe: RecipeConfig, stages: list[str]) -> None:
    """Raise a :class:`vlmtune.errors.VlmtuneError` naming the key if ``stages`` cannot run."""
    check_dataset_root(recipe.dataset)
    if "train" in stages:
        check_license(recipe.dataset)
    from vlmtune.models.loading import builds_here, ensure_model_dir

    if any(s in stages for s in MODEL_STAGES):
        ensure_model_dir(recipe.model, recipe.cache_dir)  # builds vlmtune's tiny model here
    elif "ingest" in stages and recipe.dataset.max_tokens is not None and builds_here(
            recipe.model, recipe.cache_dir):  # so dataset.max_tokens can be measured
        ensure_model_dir(recipe.model, recipe.cache_dir)
    if "evaluate" in stages:
        from vlmtune.evaluation.benchmarks.cards import HELDOUT, check_cards

        check_cards(recipe)  # every card named, and its data file, exists
        if HELDOUT in recipe.benchmarks:
            check_benchmark_fits(recipe.benchmark, recipe.dataset)


def check_dataset_root(cfg: DatasetConfig) -> None:
    """``dataset.root`` is a folder (a synthetic dataset is generated there later)."""
    if cfg.synthetic is not None:
        return
    from vlmtune.data.ingest import dataset_root

    if not dataset_root(cfg).is_dir():
        raise ConfigError(f"dataset.root={cfg.root!r} does not exist or is not a directory; "
                          "point it at a local copy of the dataset")


def check_license(cfg: DatasetConfig) -> None:
    """A dataset published for evaluation only is trained on with explicit acknowledgment."""
    if cfg.usage == "evaluation" and not cfg.acknowledge_license:
        raise ConfigError(
            f"dataset {cfg.name!r} is licensed {cfg.license} and published for evaluation; "
            "training on it is outside that use. If your use is permitted (e.g. non-commercial "
            "research that does not redistribute derivatives), set "
            "dataset.acknowledge_license=true")


def check_benchmark_fits(bench: BenchmarkConfig, cfg: DatasetConfig) -> None:
    """A multiple-choice benchmark needs multiple-choice records: peek at the source's first."""
    if bench.kind != "multiple_choice" or cfg.synthetic is not None:
        return
    from vlmtune.data.ingest import open_source
    from vlmtune.evaluation.open_ended import is_multiple_choice

    records = [item for _, _, item in itertools.islice(open_source(cfg).open(), PEEK_RECORDS)
               if isinstance(item, dict)]
    if records and not all(is_multiple_choice(r) for r in records):
        raise ConfigError(
            f"benchmark.kind=multiple_choice (benchmark card {bench.name!r}) but the records of "
            f"dataset {cfg.name!r} carry no meta.answer_index / meta.choices; use "
            "benchmark.kind=open_ended (or auto)")

"""Benchmark cards: ``benchmarks: [...]`` resolved to validated cards, with their data files.

``heldout`` is the ``benchmark`` card (the run's held-out split, logged under that card's
name); any other name is a card in ``evaluation/`` whose ``path`` (a file, or a FoodieQA root)
comes from the card or from ``benchmark_paths.<card>``; ``benchmark_limits.<card>`` limits it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import logging
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmtune.config.registry import card_names, project_root
from vlmtune.config.schema import BenchmarkConfig, RecipeConfig
from vlmtune.errors import ConfigError, VlmtuneError

HELDOUT = "heldout"
log = logging.getLogger(__name__)


def available() -> list[str]:
    return [HELDOUT, *card_names("benchmark")]


def load_cards(recipe: RecipeConfig) -> dict[str, BenchmarkConfig]:
    """``{card name: card}`` in ``benchmarks`` order; ConfigError naming ``benchmarks[i]``."""
    if not recipe.benchmarks:
        raise ConfigError(f"benchmarks is empty; name at least one of: {', '.join(available())}")
    cards: dict[str, BenchmarkConfig] = {}
    for i, name in enumerate(recipe.benchmarks):
        card = _overridden(recipe.benchmark, recipe) if name == HELDOUT else _load(i, name, recipe)
        if card.name in cards:
            raise ConfigError(f"benchmarks[{i}]={name!r}: benchmark {card.name!r} is named twice")
        cards[card.name] = card
    return cards


def _load(i: int, name: str, recipe: RecipeConfig) -> BenchmarkConfig:
    file = project_root() / "evaluation" / f"{name}.yaml"
    if not file.is_file():
        close = difflib.get_close_matches(name, available(), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"benchmarks[{i}]={name!r} is not a benchmark card; {hint}"
                          f"available: {', '.join(available())}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(BenchmarkConfig), OmegaConf.load(file))
        card = OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        raise ConfigError(f"benchmark card {file}: {str(err).splitlines()[0]}") from err
    assert isinstance(card, BenchmarkConfig)
    card.name = name
    return _overridden(card, recipe)


def _overridden(card: BenchmarkConfig, recipe: RecipeConfig) -> BenchmarkConfig:
    """The card with ``benchmark_paths.<name>`` / ``benchmark_limits.<name>`` applied."""
    changes: dict = {}
    if recipe.benchmark_paths.get(card.name):
        changes["path"] = recipe.benchmark_paths[card.name]
    if recipe.benchmark_limits.get(card.name) is not None:
        changes["limit"] = recipe.benchmark_limits[card.name]
    return dataclasses.replace(card, **changes) if changes else card


def resolve_path(card: BenchmarkConfig) -> Path:
    """The card's data path: absolute, else relative to the working directory if it exists
    there, else to the project root (bundled samples); ConfigError naming the key."""
    if not card.path:
        raise ConfigError(f"benchmark card {card.name!r} has no data file; set "
                          f"benchmark_paths.{card.name}=FILE")
    path = Path(card.path).expanduser()
    if not path.is_absolute() and not path.exists():
        path = project_root() / path
    if not path.exists():
        raise ConfigError(f"benchmark_paths.{card.name}={card.path!r} does not exist")
    if card.format == "foodieqa" and not path.is_dir():
        raise ConfigError(f"benchmark_paths.{card.name}={card.path!r} is not a directory; "
                          "point it at a FoodieQA root (with <task>_tidy.json)")
    return path.absolute()


def data_file(card: BenchmarkConfig) -> Path:
    """The file whose digest identifies the benchmark's data."""
    path = resolve_path(card)
    if card.format == "foodieqa":
        from vlmtune.evaluation.benchmarks.foodieqa import data_file as foodieqa_file

        return foodieqa_file(path, card.task)
    return path


def check_cards(recipe: RecipeConfig) -> None:
    """Every card named, and each non-heldout card's data file, exists (preflight)."""
    loaded = load_cards(recipe)
    for key, value in recipe.benchmark_paths.items():
        if value and key not in loaded:
            log.warning("benchmark_paths.%s is set but %s is not in benchmarks=%s; it is not "
                        "scored", key, key, recipe.benchmarks)
    for card in loaded.values():
        if card.format != "heldout":
            try:
                data_file(card)
            except ConfigError:
                raise
            except VlmtuneError as err:
                raise ConfigError(f"benchmark_paths.{card.name}: {err}") from err


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

"""Hydra wiring: the schema and the card folders registered in Hydra's ConfigStore.

``recipes/`` is the Hydra root. The YAML cards of the top-level ``datasets/``, ``evaluation/``
and ``pipelines/`` folders are registered as the groups ``dataset``, ``benchmark`` and
``pipeline`` (a search path would name the groups after the folders).
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from vlmtune.config.schema import RecipeConfig

SCHEMA_NAME = "vlmtune_schema"
CARD_GROUPS = {"datasets": "dataset", "evaluation": "benchmark", "pipelines": "pipeline"}


def project_root() -> Path:
    """The directory holding ``recipes/`` and the card folders (``$VLMTUNE_HOME`` overrides)."""
    if home := os.environ.get("VLMTUNE_HOME"):
        return Path(home).resolve()
    return Path(__file__).resolve().parents[3]


def recipes_dir() -> Path:
    return project_root() / "recipes"


def register_configs() -> None:
    """Store the schema and every card; idempotent."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA_NAME, node=RecipeConfig)
    root = project_root()
    for folder, group in CARD_GROUPS.items():
        for card in sorted((root / folder).glob("*.yaml")):
            store.store(group=group, name=card.stem, node=OmegaConf.load(card))


def card_names(group: str) -> list[str]:
    folder = {v: k for k, v in CARD_GROUPS.items()}.get(group)
    base = project_root() / folder if folder else recipes_dir() / group
    return sorted(p.stem for p in base.glob("*.yaml"))

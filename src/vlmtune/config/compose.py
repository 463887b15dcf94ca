"""Compose a recipe from overrides and validate it into typed objects."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmtune.config.registry import recipes_dir, register_configs
from vlmtune.config.schema import RecipeConfig
from vlmtune.errors import ConfigError

# Keys that change how a run is observed or stored, not what it computes.
RUN_KEY_EXCLUDES = ("tracking", "pipeline", "output_root")


def compose_recipe(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``recipes/config.yaml`` with command-line style overrides (no Hydra app run)."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from err


def validate(cfg: DictConfig) -> RecipeConfig:
    """Resolve interpolations and build the typed recipe; errors name the key."""
    try:
        recipe = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from err
    assert isinstance(recipe, RecipeConfig)
    return recipe


def to_container(recipe: RecipeConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(recipe), resolve=True)  # type: ignore[return-value]


def to_yaml(recipe: RecipeConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe), resolve=True)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` → ``{"train.lr": 1}``; lists and empty maps stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_key(recipe: RecipeConfig, data_fingerprint: str) -> str:
    """A short stable hash of what the run computes: the recipe (less tracking) and the data."""
    tree = {k: v for k, v in to_container(recipe).items() if k not in RUN_KEY_EXCLUDES}
    payload = json.dumps({"config": tree, "data": data_fingerprint}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=5).hexdigest()


def _one_line(err: BaseException) -> str:
    """Hydra/OmegaConf errors wrap the useful one; join the chain, drop the type-dump lines."""
    parts: list[str] = []
    while err is not None:
        for line in str(err).splitlines():
            line = line.strip()
            noise = line.startswith(("object_type", "reference_type"))
            if line and not noise and line not in parts:
                parts.append(line)
        err = err.__cause__
    return " | ".join(parts)

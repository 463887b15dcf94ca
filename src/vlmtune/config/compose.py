"""Compose a recipe from overrides and validate it into typed objects."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vlmtune.config.registry import recipes_dir, register_configs
from vlmtune.config.schema import RecipeConfig
from vlmtune.config.strict import check_composed, check_overrides
from vlmtune.errors import ConfigError

# Keys that change how a run is observed, stored or evaluated, not what training computes
# (each stage's own inputs decide whether it reruns: vlmtune.pipelines.inputs).
RUN_KEY_EXCLUDES = ("tracking", "pipeline", "output_root", "cache_dir", "benchmark", "benchmarks",
                    "benchmark_paths", "benchmark_limits", "preview",
                    "registry", "device", "train.num_workers", "model.path", "model.build")
# Where the train stage's processes meet (launcher=torchrun), not what they compute.
RUN_KEY_EXCLUDES += ("launcher.node_rank", "launcher.master_addr", "launcher.master_port",
                     "launcher.rdzv_backend", "launcher.rdzv_endpoint", "launcher.rdzv_id")


def compose_recipe(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose ``recipes/config.yaml`` with command-line style overrides (no Hydra app run)."""
    register_configs()
    check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(recipes_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_one_line(err)) from err


def validate(cfg: DictConfig) -> RecipeConfig:
    """Resolve interpolations and build the typed recipe; errors name the key (a key the
    schema does not have is one, also when added with ``+``)."""
    check_composed(cfg)
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


def run_key(recipe: RecipeConfig, data_fingerprint: str,
            model_identity: dict[str, Any] | None = None) -> str:
    """A short stable hash of what training computes: the recipe less
    :data:`RUN_KEY_EXCLUDES`, the data, and the model's identity (its files, see
    ``vlmtune.pipelines.inputs.model_identity``; by default its normalised path)."""
    flat = {k: v for k, v in flatten(to_container(recipe)).items() if not _excluded(k)}
    flat["dataset.root"] = _normalised(recipe.dataset.root)  # the data enters by content too
    model = model_identity or {"path": _normalised(recipe.model.path)}
    payload = json.dumps({"config": flat, "data": data_fingerprint, "model": model},
                         sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=5).hexdigest()


def _normalised(path: str) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(path)))


def _excluded(key: str) -> bool:
    return any(key == x or key.startswith(f"{x}.") for x in RUN_KEY_EXCLUDES)


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

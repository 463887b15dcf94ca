"""Recipe schemas, Hydra registration, composition and validation."""

from vlmtune.config.compose import compose_recipe, flatten, run_key, to_container, to_yaml, validate
from vlmtune.config.registry import project_root, register_configs
from vlmtune.config.schema import RecipeConfig

__all__ = ["RecipeConfig", "compose_recipe", "flatten", "project_root", "register_configs",
           "run_key", "to_container", "to_yaml", "validate"]

"""Strict keys: every key and group choice must exist, with a did-you-mean when it does not.

Hydra lets ``+key=value`` add a key to a structured config (and OmegaConf's ``to_object`` then
sets it as a stray attribute nobody reads), so a typo is silently ignored. Two checks close it:
:func:`check_overrides` looks at the command line before Hydra composes anything (group
choices and keys, sweeps included), :func:`check_composed` at the composed tree (so keys in a
YAML card are checked too).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from functools import cache
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vlmtune.config.registry import card_names
from vlmtune.config.schema import RecipeConfig
from vlmtune.errors import ConfigError

GROUPS = ("model", "method", "train", "dataset", "benchmark", "tracking", "pipeline",
          "experiment", "launcher", "strategy")
# Names other trainers use for our keys (HF Trainer, LLaVA, XTuner, peft).
ALIASES = {
    "learning_rate": "lr", "lora_r": "r", "rank": "r", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "max_steps": "max_iters", "num_train_epochs": "epochs",
    "num_epochs": "epochs", "gradient_accumulation_steps": "grad_accum",
    "accumulative_counts": "grad_accum", "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size", "model_max_length": "max_length",
    "max_seq_length": "max_length", "warmup": "warmup_ratio", "save_steps": "save_every",
    "dataloader_num_workers": "num_workers", "model_name_or_path": "path",
}


@cache
def schema_keys() -> tuple[frozenset[str], frozenset[str]]:
    """(every dotted key of the recipe schema, the keys holding free-form maps)."""
    keys: set[str] = set()
    open_maps: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = f"{prefix}{f.name}"
            keys.add(name)
            kind = _unwrap_optional(hints[f.name])
            if dataclasses.is_dataclass(kind):
                walk(kind, f"{name}.")
            elif typing.get_origin(kind) is dict or kind is dict:
                open_maps.add(name)

    walk(RecipeConfig, "")
    return frozenset(keys), frozenset(open_maps)


def _unwrap_optional(kind: Any) -> Any:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def is_known_key(key: str) -> bool:
    keys, open_maps = schema_keys()
    return key in keys or any(key.startswith(f"{m}.") for m in open_maps)


def suggest_key(key: str) -> str | None:
    """The nearest valid key: an alias or acronym of the last part in the same section first
    (``train.learning_rate`` → ``train.lr``), else the closest dotted key by difflib."""
    keys, _ = schema_keys()
    parent, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == parent}
    acronym = "".join(part[:1] for part in leaf.split("_") if part)
    for guess in (ALIASES.get(leaf), acronym if "_" in leaf else None):
        if guess in siblings:
            return siblings[guess]
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
    if close:
        return siblings[close[0]]
    close = difflib.get_close_matches(key, sorted(keys), n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key_error(key: str) -> ConfigError:
    hint = suggest_key(key)
    where = key.rpartition(".")[0] or "the recipe"
    tail = f"; did you mean {hint}?" if hint else f"; see `vlmtune run --cfg job` for {where}"
    return ConfigError(f"unknown config key {key!r}{tail}")


def unknown_choice_error(group: str, value: str) -> ConfigError:
    options = card_names(group)
    close = difflib.get_close_matches(value, options, n=1, cutoff=0.5)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    return ConfigError(f"{group}={value!r} is not a {group} card; {hint}"
                       f"available: {', '.join(options)}")


def check_overrides(overrides: list[str] | tuple[str, ...]) -> None:
    """Refuse unknown keys (with or without ``+``) and unknown group choices on the command
    line, sweeps included. Hydra's own flags and ``hydra.*`` keys are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    candidates = [o for o in overrides if "=" in o and not o.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except HydraException:
        return  # a syntax error: Hydra reports it with its own position marker
    for override in parsed:
        key = override.key_or_group
        if key.split("/")[0].split(".")[0] == "hydra" or override.is_delete():
            continue
        if key in GROUPS and override.package is None:
            values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                      else [override.get_value_element_as_str()])
            for value in values:
                if value not in ("null", *card_names(key)):
                    raise unknown_choice_error(key, value)
        elif not is_known_key(key):
            raise unknown_key_error(key)


def check_composed(cfg: DictConfig) -> None:
    """Refuse keys in the composed tree that the schema does not have (from ``+key`` or a
    card's YAML)."""
    def walk(node: DictConfig, prefix: str) -> None:
        for key in list(node):
            name = f"{prefix}{key}"
            if not prefix and key == "hydra":
                continue
            if not is_known_key(str(name)):
                raise unknown_key_error(str(name))
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_none() \
                    and not child._is_missing() and str(name) not in schema_keys()[1]:
                walk(child, f"{name}.")

    if OmegaConf.is_config(cfg):
        walk(cfg, "")

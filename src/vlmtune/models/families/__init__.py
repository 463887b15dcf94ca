"""Model families behind one registry: ``get_family(name)``."""

from __future__ import annotations

from vlmtune.errors import ConfigError
from vlmtune.models.families.base import Family
from vlmtune.models.families.internvl import INTERNVL

FAMILIES: dict[str, Family] = {INTERNVL.name: INTERNVL}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"model.family={name!r} is not known; choose one of: "
                          f"{', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "get_family"]

"""Model families behind one registry: ``get_family(name)``."""

from __future__ import annotations

from vlmtune.errors import ConfigError
from vlmtune.models.families.base import Family
from vlmtune.models.families.blip2 import BLIP2
from vlmtune.models.families.internvl import INTERNVL
from vlmtune.models.families.llava import LLAVA
from vlmtune.models.families.llava_next import LLAVA_NEXT
from vlmtune.models.families.qwen2_vl import QWEN2_VL

FAMILIES: dict[str, Family] = {INTERNVL.name: INTERNVL}
FAMILIES.update({LLAVA.name: LLAVA, LLAVA_NEXT.name: LLAVA_NEXT})
FAMILIES.update({QWEN2_VL.name: QWEN2_VL, BLIP2.name: BLIP2})


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"model.family={name!r} is not known; choose one of: "
                          f"{', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "Family", "get_family"]

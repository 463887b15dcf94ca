"""What every model family tells the rest of vlmtune."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """Module names (dotted prefixes in ``model.named_modules()``) the methods need."""

    name: str
    llm: str
    projector: str
    vision: str
    lm_head: str
    chat_template: str

"""Checks run before any work starts: everything that can fail early does, once."""

from __future__ import annotations

from vlmtune.config import RecipeConfig


def preflight(recipe: RecipeConfig, stages: list[str]) -> None:
    """Raise a :class:`vlmtune.errors.VlmtuneError` naming the key if ``stages`` cannot run."""

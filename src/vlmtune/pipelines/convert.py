"""Stage 3: merge ``adapter/`` into the base model → ``merged/`` (loads with transformers)."""

from __future__ import annotations

from vlmtune.convert.merge import merge_to_dir
from vlmtune.models.loading import ensure_model_dir
from vlmtune.pipelines.context import RunContext


def run(ctx: RunContext) -> None:
    adapter = ctx.require("adapter", "train")
    merge_to_dir(ensure_model_dir(ctx.recipe.model), adapter, ctx.run_dir / "merged",
                 ctx.recipe.model)

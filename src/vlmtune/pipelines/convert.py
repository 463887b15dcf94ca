"""Stage 3: ``merged/``, a model directory transformers alone loads.

LoRA/QLoRA adapters are merged into the base; a whole trained model (``trained/``: method full,
or a preset without adapters) is copied. A PLoRA adapter
cannot be merged (its update is position dependent): it is kept, and evaluation loads base +
adapter through vlmtune.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vlmtune.convert.export import export_official
from vlmtune.convert.merge import merge_to_dir
from vlmtune.models.loading import ensure_model_dir
from vlmtune.models.methods import saves_adapter
from vlmtune.models.plora import is_plora_adapter
from vlmtune.pipelines.context import RunContext
from vlmtune.pipelines.train import output_dir

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> None:
    trained = output_dir(ctx)
    if not trained.exists():
        ctx.require(trained.name, "train")
    merged = ctx.run_dir / "merged"
    if not saves_adapter(ctx.recipe.method):
        tmp = merged.with_name("merged.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(trained, tmp)
        shutil.rmtree(merged, ignore_errors=True)
        tmp.rename(merged)
    elif is_plora_adapter(trained):
        log.warning("convert: PLoRA applies its update only at image-token positions, so it "
                    "cannot be merged into the weights; keeping %s (load it with base + "
                    "vlmtune.models.methods.load_adapter)", trained)
    else:
        base = ensure_model_dir(ctx.recipe.model, ctx.recipe.cache_dir)
        merge_to_dir(base, trained, merged, ctx.recipe.model)
    if merged.exists():  # an official base: also the tuned model in its layout (LMDeploy)
        export_official(merged, ctx.run_dir, Path(ctx.recipe.model.path).expanduser())

"""A checkpoint's tokenizer and image pipeline without its weights (for previews, counting)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vlmtune.config.schema import ModelConfig
from vlmtune.data.vision import ImagePipeline


def load_processing(model_dir: Path, cfg: ModelConfig) -> tuple[Any, ImagePipeline]:
    """``(tokenizer, image pipeline)`` of ``model_dir`` as ``cfg.family`` feeds it.

    The image pipelines read only the model's config, so no weights are loaded; a family whose
    pipeline needs the model itself (Qwen2-VL hooks into it) gets it loaded.
    """
    from transformers import AutoConfig, AutoTokenizer

    from vlmtune.models.families import get_family

    family = get_family(cfg.family)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    shell = SimpleNamespace(config=AutoConfig.from_pretrained(model_dir))
    try:
        return tokenizer, family.image_pipeline(shell, Path(model_dir), cfg)
    except (AttributeError, TypeError):
        from vlmtune.models.loading import load_model

        loaded = load_model(Path(model_dir), cfg)
        return loaded.tokenizer, loaded.images

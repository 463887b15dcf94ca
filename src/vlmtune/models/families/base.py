"""What every model family tells the rest of vlmtune.

A family module builds one ``Family`` and registers it in ``families/__init__.py``; adding a
family is that module plus a ``recipes/model/`` file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtune.config.schema import ModelConfig
from vlmtune.data.vision import ImagePipeline


@dataclass(frozen=True)
class Family:
    name: str
    # Dotted module prefixes in ``model.named_modules()`` that the methods need.
    llm: str
    projector: str
    vision: str
    lm_head: str
    chat_template: str
    # The special tokens a tokenizer of this family has (the tiny build trains them in).
    special_tokens: tuple[str, ...]
    # (model, model_dir, cfg) → the image pipeline that feeds this model.
    image_pipeline: Callable[[Any, Path, ModelConfig], ImagePipeline]
    # (out_dir, cfg, tokenizer) → writes a random tiny model + its processors to out_dir.
    build_tiny: Callable[[Path, ModelConfig, Any], None]
    # (images, out_dir) → writes the processor files beside a saved (merged) model.
    save_processing: Callable[[ImagePipeline, Path], None]


def tiny_max_tiles(cfg: ModelConfig) -> int:
    """The tile limit a tiny build records as its own: ``model.max_tiles`` when the user set
    it, else ``model.tiny.max_tiles``."""
    return cfg.max_tiles if cfg.max_tiles is not None else cfg.tiny.max_tiles

"""Merge a LoRA adapter into its base model and save a directory transformers alone loads."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from vlmtune.config.schema import ModelConfig
from vlmtune.models.loading import load_model
from vlmtune.models.methods import load_adapter, merge_adapter

log = logging.getLogger(__name__)


def merge_to_dir(base_dir: Path, adapter_dir: Path, out: Path, cfg: ModelConfig) -> Path:
    """base + adapter → ``out`` (safetensors, tokenizer, and the family's processor files)."""
    base = load_model(base_dir, cfg)
    merged = merge_adapter(load_adapter(base.model, adapter_dir))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    base.tokenizer.save_pretrained(tmp)
    base.family.save_processing(base.images, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("merged %s into %s → %s", adapter_dir, base_dir, out)
    return out

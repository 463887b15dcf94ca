"""Merge a LoRA adapter into its base model and save a directory transformers alone loads."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from vlmtune.config.schema import ModelConfig
from vlmtune.models.loading import LoadedModel, load_model
from vlmtune.models.methods import load_adapter, merge_adapter

log = logging.getLogger(__name__)


def merge_to_dir(base_dir: Path, adapter_dir: Path, out: Path, cfg: ModelConfig) -> Path:
    """base + adapter → ``out`` (safetensors, tokenizer, image processor, processor config)."""
    base = load_model(base_dir, cfg)
    merged = merge_adapter(load_adapter(base.model, adapter_dir))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    save_processing(base, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log.info("merged %s into %s → %s", adapter_dir, base_dir, out)
    return out


def save_processing(loaded: LoadedModel, out: Path) -> None:
    """Tokenizer + image processor, and the processor config ``AutoProcessor`` reads.

    ``InternVLProcessor`` cannot be built without torchvision (its video processor needs it),
    so its small config is written directly.
    """
    loaded.tokenizer.save_pretrained(out)
    loaded.image_processor.save_pretrained(out)
    config = {"processor_class": "InternVLProcessor", "image_seq_length": loaded.tokens_per_tile}
    (out / "processor_config.json").write_text(json.dumps(config, indent=2) + "\n")

"""InternVL 1.5/2/2.5 in transformers' native layout (``InternVLForConditionalGeneration``).

ViT on square tiles → pixel shuffle (ratio 0.5: 2×2 patches folded into channels) → the
``mlp1``-style projector (LayerNorm → Linear → GELU → Linear) → the LLM, whose
``<IMG_CONTEXT>`` positions receive the projected patch features.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration

from vlmtune.config.schema import ModelConfig
from vlmtune.data.images import (
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    build_image_processor,
    load_tiling_processor,
    tokens_per_tile,
)
from vlmtune.data.vision import InternVLTiles
from vlmtune.models.families.base import Family, tiny_max_tiles

DEFAULT_MAX_TILES = 12


def image_pipeline(model: Any, model_dir: Path, cfg: ModelConfig) -> InternVLTiles:
    """InternVL's dynamic tiling, as the checkpoint defines it: tiles of the vision tower's
    image size, at most ``max_tiles(...)`` of them, a thumbnail when more than one."""
    vision = model.config.vision_config
    tile = _first(vision.image_size)
    processor = load_tiling_processor(model_dir, tile_size=tile, min_tiles=cfg.min_tiles,
                                      max_tiles=max_tiles(model.config, cfg))
    per_tile = tokens_per_tile(tile, _first(vision.patch_size), model.config.downsample_ratio)
    return InternVLTiles(processor, per_tile)


def max_tiles(config: Any, cfg: ModelConfig) -> int:
    """``model.max_tiles`` when set, else the checkpoint's ``max_dynamic_patch``, else 12
    (InternVL 1.5 / 2's default)."""
    if cfg.max_tiles is not None:
        return cfg.max_tiles
    own = getattr(config, "max_dynamic_patch", None)
    return int(own) if own is not None else DEFAULT_MAX_TILES


def build_tiny(out_dir: Path, cfg: ModelConfig, tokenizer: Any) -> None:
    """Write a randomly initialised tiny InternVL (model, tokenizer, image processor)."""
    spec = cfg.tiny
    torch.manual_seed(cfg.seed)
    config = InternVLConfig(
        vision_config={
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_hidden * 2,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "image_size": [spec.tile_size, spec.tile_size],
            "patch_size": [spec.patch_size, spec.patch_size],
            "initializer_range": spec.vision_hidden**-0.5,
        },
        text_config=tiny_text_config(cfg, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT),
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    config.max_dynamic_patch = tiny_max_tiles(cfg)  # its own limit, as InternVL2's config has
    model = InternVLForConditionalGeneration(config).eval()
    finish_tiny(model, cfg, tokenizer, out_dir)
    processor = build_image_processor(tile_size=spec.tile_size, max_tiles=tiny_max_tiles(cfg))
    processor.save_pretrained(out_dir)


def tiny_text_config(cfg: ModelConfig, tokenizer: Any, model_type: str = "qwen2") -> dict:
    """The tiny LLM's config (shared by families whose LLM is a Qwen2/Llama decoder)."""
    spec = cfg.tiny
    return {
        "model_type": model_type,
        "hidden_size": spec.text_hidden,
        "intermediate_size": spec.text_intermediate,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.text_heads,
        "num_key_value_heads": spec.text_kv_heads,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 4096,
        "initializer_range": spec.text_hidden**-0.5,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def finish_tiny(model: Any, cfg: ModelConfig, tokenizer: Any, out_dir: Path) -> None:
    """Scale the LM head, set generation ids, save model + tokenizer."""
    # Weights are drawn at std 1/sqrt(width), the scale a trained model's weights have; HF's
    # default 0.02 suits widths near 2500, and at width 128 it leaves attention uniform and
    # every logit near zero, which no low-rank adapter on a frozen LLM can escape. The LM head
    # gets logits of std ~2 for a normalised hidden state, so the model can become confident.
    head = model.get_output_embeddings()
    torch.nn.init.normal_(head.weight, std=2 / cfg.tiny.text_hidden**0.5)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def save_processing(images: InternVLTiles, out: Path) -> None:
    """The image processor, and the processor config ``AutoProcessor`` reads.

    ``InternVLProcessor`` cannot be built without torchvision (its video processor needs it),
    so its small config is written directly.
    """
    images.processor.save_pretrained(out)
    config = {"processor_class": "InternVLProcessor", "image_seq_length": images.tokens_per_tile}
    (out / "processor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _first(value: int | list[int] | tuple[int, ...]) -> int:
    return int(value[0]) if isinstance(value, list | tuple) else int(value)


INTERNVL = Family(
    name="internvl",
    llm="model.language_model",
    projector="model.multi_modal_projector",
    vision="model.vision_tower",
    lm_head="lm_head",
    chat_template="internlm2",
    special_tokens=(IMG_START, IMG_END, IMG_CONTEXT),
    image_pipeline=image_pipeline,
    build_tiny=build_tiny,
    save_processing=save_processing,
)

"""InternVL 1.5/2/2.5 in transformers' native layout (``InternVLForConditionalGeneration``).

ViT on square tiles → pixel shuffle (ratio 0.5: 2×2 patches folded into channels) → the
``mlp1``-style projector (LayerNorm → Linear → GELU → Linear) → the LLM, whose
``<IMG_CONTEXT>`` positions receive the projected patch features.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration

from vlmtune.config.schema import TinyModelSpec
from vlmtune.data.images import IMG_CONTEXT, build_image_processor
from vlmtune.models.families.base import Family

INTERNVL = Family(
    name="internvl",
    llm="model.language_model",
    projector="model.multi_modal_projector",
    vision="model.vision_tower",
    lm_head="lm_head",
    chat_template="internlm2",
)


def build_tiny_internvl(out_dir: Path, spec: TinyModelSpec, tokenizer, *, seed: int,
                        max_tiles: int) -> None:
    """Write a randomly initialised tiny InternVL (model, tokenizer, image processor)."""
    torch.manual_seed(seed)
    config = InternVLConfig(
        vision_config={
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_hidden * 2,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "image_size": [spec.tile_size, spec.tile_size],
            "initializer_range": spec.vision_hidden**-0.5,
            "patch_size": [spec.patch_size, spec.patch_size],
        },
        text_config={
            "model_type": "qwen2",
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
        },
        image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT),
        downsample_ratio=0.5,
        projector_hidden_act="gelu",
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = InternVLForConditionalGeneration(config).eval()
    # Weights are drawn at std 1/sqrt(width), the scale a trained model's weights have; HF's
    # default 0.02 suits widths near 2500, and at width 128 it leaves attention uniform and
    # every logit near zero, which no low-rank adapter on a frozen LLM can escape. The LM head
    # gets logits of std ~2 for a normalised hidden state, so the model can become confident.
    torch.nn.init.normal_(model.lm_head.weight, std=2 / spec.text_hidden**0.5)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    build_image_processor(tile_size=spec.tile_size, max_tiles=max_tiles).save_pretrained(out_dir)

"""BLIP-2 in transformers' native layout (``Blip2ForConditionalGeneration``, decoder-only LLM).

ViT on one square image → the Q-Former, whose ``num_query_tokens`` learned queries
cross-attend to the patch features → ``language_projection`` (one Linear) into the LLM width.
Every image fills exactly ``num_query_tokens`` ``<image>`` positions of the prompt, whatever
its size (the BLIP-2 / MiniGPT-4 line). As in MiniGPT-4, the projection is the trained
"projector"; the Q-Former and its queries stay frozen under every method and preset.

The image block sits where the record's ``<image>`` is (``Question: <image>…\n{q} Answer: ``);
transformers' ``Blip2Processor`` instead puts it before the whole text. Encoder-decoder BLIP-2
checkpoints (Flan-T5) are refused: vlmtune trains causal LMs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import Blip2Config, Blip2ForConditionalGeneration
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs

from vlmtune.config.schema import ModelConfig
from vlmtune.data.images import PROCESSOR_CONFIG
from vlmtune.data.templates import ChatTemplate, get_template
from vlmtune.data.vision import EncodedImages, concat_collate
from vlmtune.errors import CheckpointError, ConfigError
from vlmtune.models.families.base import Family
from vlmtune.models.families.internvl import finish_tiny

IMAGE_TOKEN = "<image>"  # transformers' Blip2Processor adds this token to the tokenizer
TINY_QUERY_TOKENS = 8  # BLIP-2 uses 32


class Blip2Queries:
    """``<image>`` × ``num_query_tokens`` per image; one resized square image each."""

    image_token = IMAGE_TOKEN
    block_tokens = (IMAGE_TOKEN,)

    def __init__(self, processor: BlipImageProcessorPil, num_query_tokens: int) -> None:
        self.processor, self.num_query_tokens = processor, num_query_tokens

    def encode(self, images: list[Image.Image]) -> EncodedImages:
        pixels = [self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
                  for image in images]
        tensors = {"pixel_values": torch.cat(pixels).to(torch.float32)} if pixels else {}
        blocks = [IMAGE_TOKEN * self.num_query_tokens] * len(images)
        return EncodedImages(tensors, blocks, self.num_query_tokens * len(images),
                             {"images": len(images)})

    collate = staticmethod(concat_collate)


def image_pipeline(model: Any, model_dir: Path, cfg: ModelConfig) -> Blip2Queries:
    if not model.config.use_decoder_only_language_model:
        raise ConfigError(f"model.path={str(model_dir)!r} is a BLIP-2 with an encoder-decoder "
                          "LLM (Flan-T5); model.family=blip2 trains decoder-only LLMs (OPT, ...)")
    if not (Path(model_dir) / PROCESSOR_CONFIG).is_file():
        raise CheckpointError(f"{model_dir}: no {PROCESSOR_CONFIG}; was the processor saved?")
    processor = BlipImageProcessorPil.from_pretrained(str(model_dir))
    allow_text_only(model)
    return Blip2Queries(processor, int(model.config.num_query_tokens))


def allow_text_only(model: Any) -> None:
    """Let ``forward`` take a batch without images (text-only samples, grouped together).

    transformers' BLIP-2 always encodes ``pixel_values``; given none, the model now receives
    an empty set of precomputed image features instead, which fills no position, so the LLM
    sees the text alone. (``generate`` still needs images.) Idempotent.
    """
    if getattr(model, "_vlmtune_text_only", False):
        return
    width = model.config.text_config.hidden_size

    def before_forward(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple:
        if (not args and kwargs.get("pixel_values") is None
                and kwargs.get("mm_encoder_outputs") is None):
            empty = torch.zeros(0, width, dtype=module.dtype, device=module.device)
            kwargs["pixel_values"] = None
            kwargs["mm_encoder_outputs"] = {
                "image": BaseModelOutputWithVisionQformerOutputs(pooler_output=empty)}
        return args, kwargs

    model.register_forward_pre_hook(before_forward, with_kwargs=True)
    model._vlmtune_text_only = True


def build_tiny(out_dir: Path, cfg: ModelConfig, tokenizer: Any) -> None:
    """Write a randomly initialised tiny BLIP-2 with an OPT LLM (model, tokenizer, processor).

    ``tiny.tile_size`` is the (only) image size, ``tiny.patch_size`` the ViT patch; the
    Q-Former has the vision tower's width, depth and heads, and ``TINY_QUERY_TOKENS`` queries.
    OPT has no grouped-query attention, so ``tiny.text_kv_heads`` is unused.
    """
    spec = cfg.tiny
    torch.manual_seed(cfg.seed)
    vision_std = spec.vision_hidden**-0.5
    config = Blip2Config(
        vision_config={
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_hidden * 2,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "image_size": spec.tile_size,
            "patch_size": spec.patch_size,
            "initializer_range": vision_std,
        },
        qformer_config={
            "hidden_size": spec.vision_hidden,
            "intermediate_size": spec.vision_hidden * 2,
            "num_hidden_layers": spec.vision_layers,
            "num_attention_heads": spec.vision_heads,
            "cross_attention_frequency": 1,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "initializer_range": vision_std,
        },
        text_config={
            "model_type": "opt",
            "hidden_size": spec.text_hidden,
            "word_embed_proj_dim": spec.text_hidden,
            "ffn_dim": spec.text_intermediate,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 4096,
            "dropout": 0.0,
            "init_std": spec.text_hidden**-0.5,
            "tie_word_embeddings": False,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        num_query_tokens=TINY_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        initializer_range=vision_std,
        tie_word_embeddings=False,
    )
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # HF starts the queries at zero: every query would be the same
        model.query_tokens.normal_(std=vision_std)
    finish_tiny(model, cfg, tokenizer, out_dir)
    stop_at_template_end(model, tokenizer, get_template(cfg.chat_template), out_dir)
    processor = BlipImageProcessorPil(
        size={"height": spec.tile_size, "width": spec.tile_size},
        image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD))
    processor.save_pretrained(out_dir)


def stop_at_template_end(model: Any, tokenizer: Any, template: ChatTemplate,
                         out_dir: Path) -> None:
    """Let ``generate`` stop at the template's end marker ("\\n" for blip2, as LAVIS's OPT)."""
    end = tokenizer.encode(template.end, add_special_tokens=False)
    if len(end) == 1 and end[0] != tokenizer.eos_token_id:
        model.generation_config.eos_token_id = [end[0], tokenizer.eos_token_id]
        model.generation_config.save_pretrained(out_dir)


def save_processing(images: Blip2Queries, out: Path) -> None:
    """The image processor, and the processor config ``AutoProcessor`` reads (Blip2Processor)."""
    images.processor.save_pretrained(out)
    config = {"processor_class": "Blip2Processor", "num_query_tokens": images.num_query_tokens}
    (out / "processor_config.json").write_text(json.dumps(config, indent=2) + "\n")


BLIP2 = Family(
    name="blip2",
    llm="language_model.model",
    projector="language_projection",
    vision="vision_model",
    lm_head="language_model.lm_head",
    chat_template="blip2",
    special_tokens=(IMAGE_TOKEN,),
    image_pipeline=image_pipeline,
    build_tiny=build_tiny,
    save_processing=save_processing,
)

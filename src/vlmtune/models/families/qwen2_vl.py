"""Qwen2-VL / Qwen2.5-VL in transformers' native layout (``Qwen2VLForConditionalGeneration``).

Native dynamic resolution: each image is resized to multiples of 28 px (patch 14 × merge 2)
within a pixel budget and cut into 14×14 patches, flattened; ``image_grid_thw`` gives each
image's (t, h, w) patch grid. The ViT merges 2×2 neighbouring patches into one LLM token, so an
image takes ``t·h·w / merge²`` ``<|image_pad|>`` tokens between ``<|vision_start|>`` and
``<|vision_end|>``. The LLM places them with multimodal RoPE (3-D positions from the grid).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlmtune.config.schema import ModelConfig
from vlmtune.data.images import PROCESSOR_CONFIG
from vlmtune.data.vision import EncodedImages, concat_collate
from vlmtune.errors import CheckpointError, ConfigError
from vlmtune.models.families.base import Family, tiny_max_tiles
from vlmtune.models.families.internvl import finish_tiny, tiny_text_config

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
MERGE_SIZE = 2  # 2×2 patches → one LLM token (every released Qwen2-VL / Qwen2.5-VL)
TEMPORAL_PATCH = 2  # a still image is repeated to fill the 2-frame temporal patch


class Qwen2VLPatches:
    """``<|vision_start|>`` + ``<|image_pad|>`` × (t·h·w / merge²) + ``<|vision_end|>``."""

    image_token = IMAGE_PAD
    block_tokens = (VISION_START, IMAGE_PAD, VISION_END)

    def __init__(self, processor: Qwen2VLImageProcessorPil) -> None:
        self.processor = processor
        self.merge_size = int(processor.merge_size)

    def encode(self, images: list[Image.Image]) -> EncodedImages:
        patches, grids, blocks, total = [], [], [], 0
        for image in images:
            out = self.processor(images=image.convert("RGB"), return_tensors="pt")
            grid = out["image_grid_thw"]
            n = int(grid.prod()) // self.merge_size**2
            patches.append(out["pixel_values"].to(torch.float32))
            grids.append(grid)
            blocks.append(VISION_START + IMAGE_PAD * n + VISION_END)
            total += n
        tensors = ({"pixel_values": torch.cat(patches), "image_grid_thw": torch.cat(grids)}
                   if images else {})
        return EncodedImages(tensors, blocks, total, {"patches": total * self.merge_size**2})

    collate = staticmethod(concat_collate)


def image_pipeline(model: Any, model_dir: Path, cfg: ModelConfig) -> Qwen2VLPatches:
    """Qwen2-VL patches with the saved processor's pixel budget (``model.min_tiles`` /
    ``max_tiles`` size the tiny build only); sets the model up to derive its token types."""
    if not (Path(model_dir) / PROCESSOR_CONFIG).is_file():
        raise CheckpointError(f"{model_dir}: no {PROCESSOR_CONFIG}; was the processor saved?")
    processor = Qwen2VLImageProcessorPil.from_pretrained(str(model_dir))
    merge = model.config.vision_config.spatial_merge_size
    if processor.merge_size != merge:
        raise ConfigError(f"model.path={str(model_dir)!r}: the image processor merges "
                          f"{processor.merge_size}x{processor.merge_size} patches, the vision "
                          f"tower {merge}x{merge}")
    derive_token_types(model)
    return Qwen2VLPatches(processor)


def derive_token_types(model: Any) -> None:
    """Fill ``mm_token_type_ids`` from ``input_ids`` when a caller passes images without it.

    transformers computes multimodal RoPE from ``mm_token_type_ids`` (0 text, 1 image, 2 video)
    and refuses ``image_grid_thw`` without it; the Qwen2-VL processor returns it beside
    ``input_ids``. vlmtune tokenizes in its own collator, so the model derives it instead: in
    ``forward`` (training, likelihood scoring) and in ``generate`` (where the 3-D positions
    are computed before the first forward). Idempotent.
    """
    if getattr(model, "_vlmtune_token_types", False):
        return
    image_id, video_id = model.config.image_token_id, model.config.video_token_id

    def fill(kwargs: dict[str, Any], input_ids: Any) -> None:
        if (input_ids is not None and kwargs.get("mm_token_type_ids") is None
                and (kwargs.get("image_grid_thw") is not None
                     or kwargs.get("video_grid_thw") is not None)):
            types = (input_ids == image_id).int() + 2 * (input_ids == video_id).int()
            kwargs["mm_token_type_ids"] = types

    def before_forward(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple:
        fill(kwargs, kwargs.get("input_ids", args[0] if args else None))
        return args, kwargs

    generate = model.generate

    @functools.wraps(generate)
    def generate_with_types(*args: Any, **kwargs: Any) -> Any:
        fill(kwargs, kwargs.get("input_ids", args[0] if args else None))
        return generate(*args, **kwargs)

    model.register_forward_pre_hook(before_forward, with_kwargs=True)
    model.generate = generate_with_types
    model._vlmtune_token_types = True


def build_tiny(out_dir: Path, cfg: ModelConfig, tokenizer: Any) -> None:
    """Write a randomly initialised tiny Qwen2-VL (model, tokenizer, image processor).

    ``tiny.patch_size`` is the ViT patch; ``tiny.tile_size`` sets the pixel budget: an image
    is resized to between ``min_tiles`` and ``max_tiles`` × ``tile_size``² pixels.
    """
    spec = cfg.tiny
    torch.manual_seed(cfg.seed)
    text = tiny_text_config(cfg, tokenizer, model_type="qwen2_vl_text")
    head_dim = spec.text_hidden // spec.text_heads
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                               "mrope_section": mrope_section(head_dim)}
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", IMAGE_PAD), ("video_token_id", VIDEO_PAD),
        ("vision_start_token_id", VISION_START), ("vision_end_token_id", VISION_END))}
    config = Qwen2VLConfig(
        vision_config={
            "depth": spec.vision_layers,
            "embed_dim": spec.vision_hidden,
            "num_heads": spec.vision_heads,
            "mlp_ratio": 2,
            "hidden_size": spec.text_hidden,  # the merger projects into the LLM width
            "patch_size": spec.patch_size,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH,
            "initializer_range": spec.vision_hidden**-0.5,
        },
        text_config=text,
        tie_word_embeddings=False,
        **ids,
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    finish_tiny(model, cfg, tokenizer, out_dir)
    tile_pixels = spec.tile_size**2
    processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": cfg.min_tiles * tile_pixels,
              "longest_edge": tiny_max_tiles(cfg) * tile_pixels},
        patch_size=spec.patch_size, merge_size=MERGE_SIZE, temporal_patch_size=TEMPORAL_PATCH)
    processor.save_pretrained(out_dir)


def mrope_section(head_dim: int) -> list[int]:
    """Rotary frequencies per (time, height, width): Qwen2-VL's 16/24/24 of 64, scaled."""
    half = head_dim // 2
    if half < 3:
        raise ConfigError(f"model.tiny: head dim {head_dim} is too small for 3-D RoPE")
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def save_processing(images: Qwen2VLPatches, out: Path) -> None:
    """The image processor, and the processor config ``AutoProcessor`` reads.

    ``Qwen2VLProcessor`` cannot be built without torchvision (its video processor needs it),
    so its small config is written directly.
    """
    images.processor.save_pretrained(out)
    config = {"processor_class": "Qwen2VLProcessor"}
    (out / "processor_config.json").write_text(json.dumps(config, indent=2) + "\n")


QWEN2_VL = Family(
    name="qwen2_vl",
    llm="model.language_model",
    projector="model.visual.merger",
    vision="model.visual",
    lm_head="lm_head",
    chat_template="qwen2_chatml",
    special_tokens=(VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD),
    image_pipeline=image_pipeline,
    build_tiny=build_tiny,
    save_processing=save_processing,
)

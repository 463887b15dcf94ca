"""LLaVA-NeXT ("anyres") in transformers' native layout (``LlavaNextForConditionalGeneration``).

Each image is resized (aspect kept, then padded) to the best of a fixed list of resolutions —
grids of ViT-size patches — and cut into those patches; the whole image resized to one patch
goes first. The model drops the padding from the patch features, adds a newline feature after
each row, and puts base + grid features at the ``<image>`` positions. Same CLIP ViT, projector
and vicuna chat as LLaVA-1.5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
)
from transformers.models.llava_next.image_processing_pil_llava_next import (
    LlavaNextImageProcessorPil,
)

from vlmtune.config.schema import ModelConfig
from vlmtune.errors import ConfigError
from vlmtune.models.families.base import Family, tiny_max_tiles
from vlmtune.models.families.internvl import finish_tiny, tiny_text_config
from vlmtune.models.families.llava import (
    EOS,
    IMAGE_TOKEN,
    ProcessorImages,
    processor_args,
    processor_dir,
    save_processing,
    tiny_vision_config,
    write_processor_config,
)

# (rows, columns) of ViT-size patches LLaVA-NeXT chooses from (336 px patches in the release).
GRIDS = ((2, 2), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (4, 1))


class AnyresImages(ProcessorImages):
    """``pixel_values`` [images, patches, 3, S, S] (patch counts padded) + ``image_sizes``."""

    def collate(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return pad_patches(parts)


def pad_patches(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Join images with different patch counts: zero patches fill up to the largest count.

    The model reads each image's real count back from its ``image_sizes`` and the pinpoints.
    """
    if not parts:
        return {}
    most = max(p["pixel_values"].shape[1] for p in parts)
    pixels = [F.pad(p["pixel_values"], (0, 0, 0, 0, 0, 0, 0, most - p["pixel_values"].shape[1]))
              for p in parts]
    return {"pixel_values": torch.cat(pixels), "image_sizes": torch.cat([p["image_sizes"]
                                                                          for p in parts])}


def grid_pinpoints(size: int, max_tiles: int) -> list[list[int]]:
    """The [height, width] resolutions of the grids with at most ``max_tiles`` patches."""
    pinpoints = [[size * rows, size * cols] for rows, cols in GRIDS if rows * cols <= max_tiles]
    if not pinpoints:
        raise ConfigError(f"model.max_tiles={max_tiles} leaves no LLaVA-NeXT grid; the smallest "
                          f"has {min(r * c for r, c in GRIDS)} patches")
    return pinpoints


def image_pipeline(model: Any, model_dir: Path, cfg: ModelConfig) -> AnyresImages:
    image_processor = LlavaNextImageProcessorPil.from_pretrained(str(processor_dir(model_dir)))
    # The model's config decides how patch features are laid out; tile with the same grids.
    image_processor.image_grid_pinpoints = [list(p) for p in model.config.image_grid_pinpoints]
    processor = LlavaNextProcessor(image_processor, AutoTokenizer.from_pretrained(model_dir),
                                   **processor_args(model.config))
    return AnyresImages(processor)


def build_tiny(out_dir: Path, cfg: ModelConfig, tokenizer: Any) -> None:
    """Write a randomly initialised tiny LLaVA-NeXT (model, tokenizer, image processor)."""
    spec = cfg.tiny
    pinpoints = grid_pinpoints(spec.tile_size, tiny_max_tiles(cfg))
    torch.manual_seed(cfg.seed)
    tokenizer.eos_token = EOS
    config = LlavaNextConfig(
        vision_config=tiny_vision_config(spec),
        text_config=tiny_text_config(cfg, tokenizer, model_type="llama"),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(spec.tile_size // spec.patch_size) ** 2,
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    finish_tiny(model, cfg, tokenizer, out_dir)
    size = spec.tile_size
    LlavaNextImageProcessorPil(size={"shortest_edge": size},
                               crop_size={"height": size, "width": size},
                               image_grid_pinpoints=pinpoints).save_pretrained(out_dir)
    write_processor_config(out_dir, "LlavaNextProcessor", processor_args(config))


LLAVA_NEXT = Family(
    name="llava_next",
    llm="model.language_model",
    projector="model.multi_modal_projector",
    vision="model.vision_tower",
    lm_head="lm_head",
    chat_template="vicuna_v1",
    special_tokens=(EOS, IMAGE_TOKEN),
    image_pipeline=image_pipeline,
    build_tiny=build_tiny,
    save_processing=save_processing,
)

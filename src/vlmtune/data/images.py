"""InternVL dynamic tiling (through transformers' GOT-OCR2 processor) and image token blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from vlmtune.errors import CheckpointError, ConfigError, DataError

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
PROCESSOR_CONFIG = "preprocessor_config.json"


def build_image_processor(
    *, tile_size: int, max_tiles: int, min_tiles: int = 1
) -> GotOcr2ImageProcessorPil:
    """A processor that cuts an image into ``tile_size`` tiles (plus a thumbnail when > 1)."""
    if tile_size < 1:
        raise ConfigError(f"tile_size must be positive, got {tile_size}")
    if not 1 <= min_tiles <= max_tiles:
        raise ConfigError(f"need 1 <= min_tiles <= max_tiles, got {min_tiles} and {max_tiles}")
    return GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        min_patches=min_tiles,
        max_patches=max_tiles,
        size={"height": tile_size, "width": tile_size},
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )


def load_image_processor(model_dir: Path, **overrides: Any) -> GotOcr2ImageProcessorPil:
    """The image processor saved in ``model_dir`` (PIL backend: works without torchvision),
    with ``overrides`` replacing saved settings."""
    if not (Path(model_dir) / PROCESSOR_CONFIG).is_file():
        raise CheckpointError(f"{model_dir}: no {PROCESSOR_CONFIG}; was the processor saved?")
    return GotOcr2ImageProcessorPil.from_pretrained(str(model_dir), **overrides)


def load_tiling_processor(
    model_dir: Path, *, tile_size: int, max_tiles: int, min_tiles: int = 1
) -> GotOcr2ImageProcessorPil:
    """The saved processor (mean, std, resampling) set to tile as InternVL does, whatever its
    saved flags say: ``tile_size`` tiles, ``min_tiles``…``max_tiles`` of them, + a thumbnail.

    transformers' InternVL converter saves ``crop_to_patches`` at its default (False), which
    would squash every image into one tile; InternVL always tiles.
    """
    if not 1 <= min_tiles <= max_tiles:
        raise ConfigError(f"need 1 <= model.min_tiles <= max tiles, got {min_tiles} and "
                          f"{max_tiles}")
    return load_image_processor(model_dir, crop_to_patches=True, min_patches=min_tiles,
                                max_patches=max_tiles,
                                size={"height": tile_size, "width": tile_size})


def tile_image(processor: GotOcr2ImageProcessorPil, image: Image.Image) -> tuple[torch.Tensor, int]:
    """``(pixel_values [T, 3, S, S] float32, T)`` for one image."""
    out = processor(images=image.convert("RGB"), return_tensors="pt")
    pixel_values = out["pixel_values"].to(torch.float32)
    return pixel_values, int(out["num_patches"][0])


def tokens_per_tile(tile_size: int, patch_size: int, downsample_ratio: float) -> int:
    """LLM tokens per tile after the ViT patches and the pixel shuffle."""
    side = tile_size / patch_size * downsample_ratio
    if tile_size % patch_size or not side.is_integer() or side < 1:
        raise ConfigError(
            f"tile_size {tile_size} / patch_size {patch_size} × downsample_ratio "
            f"{downsample_ratio} must be a whole number of tokens per side, got {side}"
        )
    return int(side) ** 2


def image_token_block(num_tiles: int, tokens_per_tile: int) -> str:
    """``<img>`` + ``<IMG_CONTEXT>`` × (tiles · tokens per tile) + ``</img>``."""
    if num_tiles < 1 or tokens_per_tile < 1:
        raise ValueError(f"need positive counts, got {num_tiles} tiles × {tokens_per_tile}")
    return IMG_START + IMG_CONTEXT * (num_tiles * tokens_per_tile) + IMG_END


def open_image(path: Path) -> Image.Image:
    """Open and decode an image file, raising DataError instead of PIL's exceptions."""
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", reason="missing_image", file=str(path))
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as err:
        raise DataError(
            f"cannot read image: {err}", reason="unreadable_image", file=str(path)
        ) from err

"""How a model family turns images into model inputs and prompt token blocks.

Every family has an image pipeline: ``encode`` gives the tensors the model's forward takes
(``pixel_values`` …) and, per image, the token block that replaces its ``<image>``
placeholder; ``collate`` joins the tensors of several samples into one batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from vlmtune.data.images import IMG_CONTEXT, IMG_END, IMG_START, image_token_block, tile_image


@dataclass
class EncodedImages:
    tensors: dict[str, torch.Tensor]
    blocks: list[str]
    # How many positions of ``image_token`` the blocks hold (the model fills them).
    num_image_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


class ImagePipeline(Protocol):
    image_token: str  # the placeholder token whose positions receive image features
    block_tokens: tuple[str, ...]  # every special token a block is made of

    def encode(self, images: list[Image.Image]) -> EncodedImages: ...

    def collate(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]: ...


def concat_collate(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate each tensor along dim 0 (tiles, patches, grids of all samples in order)."""
    if not parts:
        return {}
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


class InternVLTiles:
    """InternVL tiling: ``<img>`` + ``<IMG_CONTEXT>`` × (tokens per tile · tiles) + ``</img>``."""

    image_token = IMG_CONTEXT
    block_tokens = (IMG_START, IMG_CONTEXT, IMG_END)

    def __init__(self, processor: Any, tokens_per_tile: int) -> None:
        self.processor, self.tokens_per_tile = processor, tokens_per_tile

    def encode(self, images: list[Image.Image]) -> EncodedImages:
        """Tile each image; ``extra["tiles"]``: the tile count of each image (thumbnail
        included)."""
        tiles, blocks, counts = [], [], []
        for image in images:
            pixel_values, n = tile_image(self.processor, image)
            tiles.append(pixel_values)
            blocks.append(image_token_block(n, self.tokens_per_tile))
            counts.append(n)
        tensors = {"pixel_values": torch.cat(tiles)} if tiles else {}
        return EncodedImages(tensors, blocks, sum(counts) * self.tokens_per_tile,
                             {"tiles": counts})

    collate = staticmethod(concat_collate)

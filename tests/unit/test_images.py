from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlmtune.data.images import (
    IMG_CONTEXT,
    IMG_END,
    IMG_START,
    build_image_processor,
    image_token_block,
    load_image_processor,
    open_image,
    tile_image,
    tokens_per_tile,
)
from vlmtune.errors import CheckpointError, ConfigError, DataError


@pytest.fixture(scope="module")
def processor_448():
    return build_image_processor(tile_size=448, max_tiles=12)


@pytest.mark.parametrize(
    ("size", "tiles"),
    [((600, 900), 7), ((900, 600), 7), ((448, 448), 1), ((1344, 448), 4), ((448, 896), 3)],
)
def test_tiles_448_max_12(processor_448, size, tiles):
    pixel_values, n = tile_image(processor_448, Image.new("RGB", size, (200, 30, 30)))
    assert n == tiles
    assert pixel_values.shape == (tiles, 3, 448, 448)
    assert pixel_values.dtype == torch.float32


@pytest.mark.parametrize(
    ("size", "tiles"),
    [((28, 28), 1), ((56, 28), 3), ((28, 112), 5), ((100, 100), 5), ((300, 20), 5)],
)
def test_tiles_28_max_4(size, tiles):
    processor = build_image_processor(tile_size=28, max_tiles=4)
    pixel_values, n = tile_image(processor, Image.new("RGB", size))
    assert (n, tuple(pixel_values.shape)) == (tiles, (tiles, 3, 28, 28))


def test_normalises_with_imagenet_stats_and_converts_to_rgb():
    processor = build_image_processor(tile_size=28, max_tiles=1)
    pixel_values, n = tile_image(processor, Image.new("L", (40, 40), 255))
    assert n == 1
    expected = torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    torch.testing.assert_close(pixel_values[0, :, 5, 5], expected, rtol=1e-4, atol=1e-4)


def test_processor_save_load(tmp_path):
    build_image_processor(tile_size=28, max_tiles=4).save_pretrained(tmp_path)
    loaded = load_image_processor(tmp_path)
    assert (loaded.max_patches, loaded.size.height, loaded.crop_to_patches) == (4, 28, True)
    with pytest.raises(CheckpointError):
        load_image_processor(tmp_path / "missing")


def test_bad_processor_settings():
    with pytest.raises(ConfigError):
        build_image_processor(tile_size=28, max_tiles=2, min_tiles=3)


def test_tokens_per_tile():
    assert tokens_per_tile(448, 14, 0.5) == 256
    assert tokens_per_tile(28, 14, 0.5) == 1
    assert tokens_per_tile(56, 14, 1.0) == 16
    for args in [(450, 14, 0.5), (42, 14, 0.5)]:
        with pytest.raises(ConfigError):
            tokens_per_tile(*args)


def test_image_token_block():
    block = image_token_block(3, 2)
    assert block == IMG_START + IMG_CONTEXT * 6 + IMG_END
    assert (IMG_START, IMG_END, IMG_CONTEXT) == ("<img>", "</img>", "<IMG_CONTEXT>")


def test_open_image(tmp_path):
    Image.new("RGB", (10, 12)).save(tmp_path / "ok.png")
    assert open_image(tmp_path / "ok.png").size == (10, 12)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as info:
        open_image(tmp_path / "bad.png")
    assert (info.value.reason, info.value.file) == ("unreadable_image", str(tmp_path / "bad.png"))
    with pytest.raises(DataError) as info:
        open_image(tmp_path / "none.png")
    assert info.value.reason == "missing_image"

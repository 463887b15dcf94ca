"""InternVL tiling follows the checkpoint: on a directory saved as transformers' converter saves
one (crop_to_patches False), images are still tiled exactly as InternVL's dynamic_preprocess."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from PIL import Image
from transformers import AutoConfig

from vlmtune.config.schema import ModelConfig
from vlmtune.models.families.internvl import INTERNVL


def dynamic_preprocess_tiles(width: int, height: int, max_num: int = 12, min_num: int = 1,
                             image_size: int = 448) -> int:
    """Tiles (thumbnail included) by InternVL's published rule (REFERENCE.md), not our code:
    grids i×j with min ≤ i·j ≤ max, by area; the closest aspect ratio wins; on a tie the later
    (larger) grid when the image covers more than half its pixels; + thumbnail if > 1 tile."""
    grids = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1)
                    for j in range(1, n + 1) if min_num <= i * j <= max_num},
                   key=lambda g: g[0] * g[1])
    aspect, best, best_diff = width / height, (1, 1), float("inf")
    for i, j in grids:
        diff = abs(aspect - i / j)
        if diff < best_diff:
            best, best_diff = (i, j), diff
        elif diff == best_diff and width * height > 0.5 * image_size**2 * i * j:
            best = (i, j)
    n = best[0] * best[1]
    return n + 1 if n > 1 else n


def pipeline(model_dir, **overrides):
    shell = SimpleNamespace(config=AutoConfig.from_pretrained(model_dir))
    return INTERNVL.image_pipeline(shell, model_dir, ModelConfig(path=str(model_dir),
                                                                 **overrides))


def tiles(images, size):
    return images.encode([Image.new("RGB", size, (90, 120, 30))]).extra["tiles"]


def test_converter_saves_crop_to_patches_off(internvl_hf_dir):
    saved = json.loads((internvl_hf_dir / "preprocessor_config.json").read_text())
    assert saved["crop_to_patches"] is False
    assert saved["size"] == {"height": 448, "width": 448}


@pytest.mark.parametrize(("size", "expected"),
                         [((1920, 1080), 9), ((800, 600), 13), ((448, 448), 1), ((600, 900), 7)])
def test_tiles_as_dynamic_preprocess_on_converter_checkpoint(internvl_hf_dir, size, expected):
    images = pipeline(internvl_hf_dir)
    assert dynamic_preprocess_tiles(*size) == expected
    assert tiles(images, size) == [expected]
    # the header-only count (ingest's token check, length grouping) agrees
    assert images.processor.get_number_of_image_patches(size[1], size[0]) == expected
    encoded = images.encode([Image.new("RGB", size)])
    assert encoded.num_image_tokens == 256 * expected
    assert tuple(encoded.tensors["pixel_values"].shape) == (expected, 3, 448, 448)


def test_many_sizes_agree_with_dynamic_preprocess(internvl_hf_dir):
    images = pipeline(internvl_hf_dir)
    for size in [(100, 50), (3000, 400), (640, 480), (1000, 1000), (300, 1200), (1280, 720),
                 (500, 333), (2048, 1536)]:
        assert tiles(images, size) == [dynamic_preprocess_tiles(*size)], size


def test_max_dynamic_patch_from_the_checkpoint_config(internvl_hf_dir, tmp_path):
    own = tmp_path / "max6"
    shutil.copytree(internvl_hf_dir, own)
    config = json.loads((own / "config.json").read_text())
    (own / "config.json").write_text(json.dumps({**config, "max_dynamic_patch": 6}))
    assert dynamic_preprocess_tiles(1920, 1080, max_num=6) == 3
    assert tiles(pipeline(own), (1920, 1080)) == [3]
    # only a value the user sets beats the checkpoint's
    assert tiles(pipeline(own, max_tiles=1), (1920, 1080)) == [1]
    assert tiles(pipeline(internvl_hf_dir, max_tiles=4), (800, 600)) == \
        [dynamic_preprocess_tiles(800, 600, max_num=4)]


def test_shipped_model_cards_leave_max_tiles_to_the_checkpoint():
    from vlmtune.config import compose_recipe, validate

    for card in ("internvl2_2b", "tiny_internvl", "tiny_llava", "tiny_qwen2_vl"):
        recipe = validate(compose_recipe([f"model={card}", "model.path=/nowhere"]))
        assert recipe.model.max_tiles is None, card


def test_tiny_model_records_its_own_max_tiles(tiny_model_dir):
    model_dir, recipe = tiny_model_dir
    assert recipe.model.max_tiles is None and recipe.model.tiny.max_tiles == 4
    assert AutoConfig.from_pretrained(model_dir).max_dynamic_patch == 4
    images = pipeline(model_dir)
    assert images.processor.max_patches == 4
    # 56-px tiles: a 2:1 image → 2×1 + thumbnail, as dynamic_preprocess with max 4
    assert tiles(images, (112, 56)) == [dynamic_preprocess_tiles(112, 56, max_num=4,
                                                                 image_size=56)] == [3]

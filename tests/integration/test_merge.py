"""convert: the merged directory loads with transformers alone and matches the adapter model."""

from __future__ import annotations

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from vlmtune.data.images import image_token_block, tile_image
from vlmtune.data.templates import INTERNLM2, encode_prompt
from vlmtune.models.loading import load_model
from vlmtune.models.methods import load_adapter


def _inputs(loaded):
    from PIL import Image

    image = Image.new("RGB", (96, 64), (200, 40, 40))
    pixel_values, tiles = tile_image(loaded.images.processor, image)
    block = image_token_block(tiles, loaded.images.tokens_per_tile)
    ids = encode_prompt(loaded.tokenizer, "<image>\n图中的菜是什么？", template=INTERNLM2,
                        image_blocks=[block])
    return torch.tensor([ids]), pixel_values


def test_merged_dir_loads_with_transformers_and_matches_adapter_logits(tiny_model_dir, tmp_path,
                                                                         merge_random_adapter):
    model_dir, recipe = tiny_model_dir
    loaded, merged_dir = merge_random_adapter(model_dir, recipe)
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    assert AutoTokenizer.from_pretrained(merged_dir).encode("饺子") == \
        loaded.tokenizer.encode("饺子")
    adapter_model = load_adapter(load_model(model_dir, recipe.model).model, tmp_path / "adapter")
    base = load_model(model_dir, recipe.model).model
    input_ids, pixel_values = _inputs(loaded)
    with torch.no_grad():
        want = adapter_model(input_ids=input_ids, pixel_values=pixel_values).logits
        got = merged(input_ids=input_ids, pixel_values=pixel_values).logits
        untouched = base(input_ids=input_ids, pixel_values=pixel_values).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # float32 re-association
    assert (got - untouched).abs().max() > 1e-3  # the merge changed the model

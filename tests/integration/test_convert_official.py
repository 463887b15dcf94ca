"""Official InternVL2 ↔ transformers-native: logits equal an independent official forward,
and the round trip is bit-exact."""

from __future__ import annotations

import json

import pytest
import torch
from tests.fixtures.official import (
    REMOTE_CODE,
    load_official,
    official_forward,
    tokens_per_tile,
    write_official,
)
from transformers import AutoModelForImageTextToText

from vlmtune.convert.official import to_native_dir, to_official_dir

# InternLM2 with G = heads / kv_heads = 1, 2, 4; Qwen2 (InternVL2-1B); Llama (InternVL2-76B)
CASES = [("internlm2", 4), ("internlm2", 2), ("internlm2", 1), ("qwen2", 2), ("llama", 2)]


def _inputs(image_token_id: int, tiles: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    block = [image_token_id] * (tokens_per_tile() * tiles)
    ids = [1, 15, 17, 33] + block + [40, 41, 70, 90, 13]
    return torch.tensor([ids]), torch.randn(tiles, 3, 56, 56, generator=g)


@pytest.fixture(scope="module", params=CASES, ids=[f"{llm}-kv{kv}" for llm, kv in CASES])
def converted(request, tmp_path_factory):
    llm, kv = request.param
    root = tmp_path_factory.mktemp(f"official-{llm}-{kv}")
    src = write_official(root / "src", llm=llm, kv_heads=kv, seed=kv)
    return src, to_native_dir(src, root / "hf", max_shard_size="40KB")


def test_native_logits_equal_the_official_forward(converted):
    src, hf = converted
    config, weights = load_official(src)
    native = json.loads((hf / "config.json").read_text())
    input_ids, pixels = _inputs(native["image_token_id"])
    model = AutoModelForImageTextToText.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(input_ids=input_ids, pixel_values=pixels).logits
        want = official_forward(weights, config, input_ids, pixels, native["image_token_id"])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert len(list(hf.glob("model-*.safetensors"))) > 1  # sharded, with an index
    assert (hf / "model.safetensors.index.json").exists()


def test_native_config_avoids_the_known_traps(converted):
    src, hf = converted
    native = json.loads((hf / "config.json").read_text())
    official = json.loads((src / "config.json").read_text())
    text = native["text_config"]
    assert native["architectures"] == ["InternVLForConditionalGeneration"]
    assert native["tie_word_embeddings"] is False and text["tie_word_embeddings"] is False
    assert native["image_seq_length"] == 4 and native["vision_feature_layer"] == -1
    assert native["max_dynamic_patch"] == official["max_dynamic_patch"] == 6
    assert "attn_implementation" not in text and "use_flash_attn" not in native["vision_config"]
    if official["llm_config"]["model_type"] == "internlm2":
        assert text["model_type"] == "llama"
        assert text["rope_parameters"] == {"rope_type": "dynamic", "factor": 2.0,
                                           "rope_theta": 1e6}
    else:
        assert text["model_type"] == official["llm_config"]["model_type"]
    processor = json.loads((hf / "preprocessor_config.json").read_text())
    assert processor["crop_to_patches"] is True and processor["max_patches"] == 6
    assert processor["size"] == {"height": 56, "width": 56}
    assert json.loads((hf / "generation_config.json").read_text()) == \
        json.loads((src / "generation_config.json").read_text())


@pytest.mark.parametrize("resaved", [False, True], ids=["converted", "save_pretrained"])
def test_to_official_after_to_hf_is_bit_exact(converted, tmp_path, resaved):
    src, hf = converted
    if resaved:  # transformers 5 stores InternVL under its legacy tensor names
        model = AutoModelForImageTextToText.from_pretrained(hf, dtype=torch.float32)
        model.save_pretrained(tmp_path / "resaved")
        hf = tmp_path / "resaved"
    back = to_official_dir(hf, tmp_path / "official", like=src)
    config, weights = load_official(src)
    back_config, back_weights = load_official(back)
    assert sorted(back_weights) == sorted(weights)
    for name, tensor in weights.items():
        assert back_weights[name].dtype == tensor.dtype
        assert torch.equal(back_weights[name], tensor), name
    assert back_config == config
    for name in (REMOTE_CODE, "configuration_internvl_chat.py", "tokenizer_config.json",
                 "generation_config.json"):
        assert (back / name).read_bytes() == (src / name).read_bytes()

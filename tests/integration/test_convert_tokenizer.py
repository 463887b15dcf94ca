"""The converted fast tokenizer encodes exactly as InternLM2's SentencePiece original."""

from __future__ import annotations

import json
import re

import pytest
import sentencepiece as spm
from tests.fixtures.official import ADDED, write_official
from transformers import AutoTokenizer

from vlmtune.convert.official import to_native_dir
from vlmtune.data.templates import INTERNVL2_SYSTEM

TEXTS = [
    "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n图中的菜是什么？ What dish is "
    "shown in the picture?<|im_end|>\n<|im_start|>assistant\n北京烤鸭 Peking duck<|im_end|>",
    "  two leading spaces, 2024 digits, 麻婆豆腐（A) and a tab\tend",
    "我选择（A)。这道菜来自四川",
]


def _original_ids(src, text: str) -> list[int]:
    """InternLM2Tokenizer's encoding: added tokens split out, each piece SentencePiece-encoded
    on its own, BOS first (the slow tokenizer's published behaviour)."""
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    decoder = json.loads((src / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    special = {spec["content"]: int(i) for i, spec in decoder.items() if int(i) > 2}
    ids = [sp.bos_id()]
    for part in re.split("(" + "|".join(map(re.escape, special)) + ")", text):
        if part in special:
            ids.append(special[part])
        elif part:
            ids.extend(sp.encode(part))
    return ids


@pytest.fixture(scope="module")
def internlm2_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    src = write_official(root / "src", llm="internlm2")
    return src, to_native_dir(src, root / "hf")


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_the_sentencepiece_original(internlm2_pair, text):
    src, hf = internlm2_pair
    tokenizer = AutoTokenizer.from_pretrained(hf)
    assert tokenizer.encode(text) == _original_ids(src, text)


def test_special_tokens_keep_their_ids_and_chat_template_is_chatml(internlm2_pair):
    src, hf = internlm2_pair
    tokenizer = AutoTokenizer.from_pretrained(hf)
    size = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model")).get_piece_size()
    assert [tokenizer.convert_tokens_to_ids(t) for t in ADDED] == \
        list(range(size, size + len(ADDED)))
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token == "</s>"
    assert json.loads((hf / "config.json").read_text())["image_token_id"] == size + 4
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}],
                                             tokenize=False, add_generation_prompt=True)
    assert rendered == (f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|>\n"
                        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")


def test_qwen2_tokenizer_is_kept_as_is(tmp_path):
    src = write_official(tmp_path / "src", llm="qwen2")
    hf = to_native_dir(src, tmp_path / "hf")
    original, converted = AutoTokenizer.from_pretrained(src), AutoTokenizer.from_pretrained(hf)
    for text in TEXTS:
        assert converted.encode(text) == original.encode(text)

"""The tokenizer fixtures behave like the releases they stand for (BOS, prefix space, ids)."""

from __future__ import annotations

import pytest
from tests.fixtures.tokenizers import IMAGE_TOKENS

MIXED = "图中的菜是什么？ What dish is shown? 123"


def test_bos_where_the_release_puts_it(tokenizer_kinds):
    assert tokenizer_kinds["internlm2"]("").input_ids == [tokenizer_kinds["internlm2"].bos_token_id]
    assert tokenizer_kinds["internlm2"].convert_ids_to_tokens(1) == "<s>"
    assert tokenizer_kinds["llama"].convert_ids_to_tokens(tokenizer_kinds["llama"]("").input_ids) \
        == ["<s>"]
    assert tokenizer_kinds["qwen2"]("").input_ids == []
    assert tokenizer_kinds["qwen2"].bos_token is None


def test_prefix_space_only_for_llama(tokenizer_kinds):
    assert tokenizer_kinds["llama"].tokenize("What")[0].startswith("▁")
    assert not tokenizer_kinds["internlm2"].tokenize("What")[0].startswith("▁")


@pytest.mark.parametrize("kind", ["internlm2", "llama"])
def test_fast_tokenizer_matches_sentencepiece(tokenizer_kinds, kind, tmp_path):
    import sentencepiece as spm
    from tests.fixtures.tokenizers import internlm2_sentencepiece, llama_sentencepiece

    model = (internlm2_sentencepiece if kind == "internlm2" else llama_sentencepiece)(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    for text in (MIXED, "two  spaces\nand a line", "红烧肉 (A) braised pork belly"):
        assert tokenizer_kinds[kind](text).input_ids == sp.encode(text, add_bos=True)


@pytest.mark.parametrize("kind", ["internlm2", "llama", "qwen2"])
def test_image_tokens_are_single_ids(tokenizer_kinds, kind):
    tok = tokenizer_kinds[kind]
    for token in IMAGE_TOKENS:
        assert len(tok.encode(token, add_special_tokens=False)) == 1

"""Streamed replies hold back a character whose bytes are not all generated yet: real byte-level
BPE and SentencePiece byte-fallback tokenizers split CJK characters and emoji over tokens."""

from __future__ import annotations

from itertools import pairwise

import pytest

from vlmtune.app.session import decode_steps, stream_text

REPLACEMENT = "\ufffd"


def test_stream_text_drops_only_trailing_replacement_characters():
    assert stream_text("面条" + REPLACEMENT) == "面条"
    assert stream_text("面条" + REPLACEMENT * 3) == "面条"
    assert stream_text(REPLACEMENT) == ""
    assert stream_text("面" + REPLACEMENT + "A") == "面" + REPLACEMENT + "A"
    assert stream_text("noodles") == "noodles"
    assert stream_text("") == ""


@pytest.mark.parametrize("kind", ["qwen2", "internlm2", "llama"])
@pytest.mark.parametrize("text", ["面条很好吃", "吃面条🍜"])
def test_split_characters_never_stream_half_decoded(tokenizer_kinds, kind, text):
    tok = tokenizer_kinds[kind]
    ids = tok.encode(text, add_special_tokens=False)
    # more tokens than characters: at least one character spans several tokens
    assert len(ids) > len(text)
    # the tokenizer really does decode such a prefix with a trailing U+FFFD
    assert any(tok.decode(ids[:k]).endswith(REPLACEMENT) for k in range(1, len(ids)))
    texts = list(decode_steps(tok, ([i] for i in ids)))
    # only whole characters, growing one or more at a time, ending with the full text
    whole = [text[:n] for n in range(1, len(text) + 1)]
    assert all(t in whole for t in texts), texts
    assert [len(t) for t in texts] == sorted({len(t) for t in texts})
    assert all(later.startswith(t) for t, later in pairwise(texts))
    assert texts[-1] == text == tok.decode(ids)
    assert not any(REPLACEMENT in t for t in texts)


def test_steps_of_several_ids_and_no_text_twice_in_a_row(tokenizer_kinds):
    tok = tokenizer_kinds["qwen2"]
    noodles = tok.encode("面条", add_special_tokens=False)  # 面 | 条 in two byte tokens
    assert len(noodles) == 3
    end = tok.convert_tokens_to_ids("<|im_end|>")
    steps = [noodles[:1], [end], noodles[1:2], noodles[2:], [end]]
    assert list(decode_steps(tok, steps)) == ["面", "面条"]
    assert list(decode_steps(tok, [noodles])) == ["面条"]


def test_an_invalid_byte_shows_once_generation_ends(tokenizer_kinds):
    tok = tokenizer_kinds["qwen2"]
    noodle = tok.encode("面", add_special_tokens=False)
    lead = tok.convert_tokens_to_ids("å")  # the byte 0xE5 alone: a lead byte, never finished
    letter = tok.convert_tokens_to_ids("A")
    assert len(noodle) == 1
    assert list(decode_steps(tok, [noodle, [lead]])) == ["面", "面" + REPLACEMENT]
    assert list(decode_steps(tok, [noodle, [lead], [letter]])) == \
        ["面", "面" + REPLACEMENT + "A"]
    assert list(decode_steps(tok, [[lead]])) == [REPLACEMENT]


def test_nothing_generated_still_gives_one_text(tokenizer_kinds):
    tok = tokenizer_kinds["qwen2"]
    assert list(decode_steps(tok, [])) == [""]
    assert list(decode_steps(tok, [[tok.convert_tokens_to_ids("<|im_end|>")]])) == [""]


def test_sentencepiece_byte_runs_do_not_take_back_a_shown_character(tokenizer_kinds):
    tok = tokenizer_kinds["internlm2"]
    ids = tok.encode("面条很好吃", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids[2:6]) == ["<0xE5>", "<0xBE>", "<0x88>", "<0xE5>"]
    # byte fallback decodes the byte run as one: 很 (E5 BE 88) is lost while 好 is unfinished
    assert tok.decode(ids[:5]) == "面条很"
    assert tok.decode(ids[:6]) == "面条" + REPLACEMENT * 4
    assert list(decode_steps(tok, ([i] for i in ids))) == \
        ["面", "面条", "面条很", "面条很好", "面条很好吃"]
    # 好 never finished: the full decode, as the tokenizer gives it, comes last
    cut = ids[:6] + [tok.convert_tokens_to_ids("A")]
    assert list(decode_steps(tok, ([i] for i in cut))) == \
        ["面", "面条", "面条很", "面条" + REPLACEMENT * 4 + "A"]

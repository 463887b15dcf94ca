from __future__ import annotations

from transformers import AutoTokenizer

from vlmtune.data.templates import INTERNLM2, render_conversation
from vlmtune.models.tokenizer import SPECIAL_TOKENS, train_tokenizer

TWO_TURNS = [
    {"from": "human", "value": "What dish is shown?"},
    {"from": "gpt", "value": "Peking duck."},
    {"from": "human", "value": "图中的菜是什么？"},
    {"from": "gpt", "value": "北京烤鸭"},
]


def _messages(conversations, system=None):
    role = {"human": "user", "gpt": "assistant"}
    head = [] if system is None else [{"role": "system", "content": system}]
    return head + [{"role": role[t["from"]], "content": t["value"]} for t in conversations]


def test_special_tokens_are_single_ids_and_never_split(tiny_tokenizer):
    ids = [tiny_tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(len(SPECIAL_TOKENS)))
    text = "a" + "".join(SPECIAL_TOKENS) + "<IMG_CONTEXT><IMG_CONTEXT>b"
    encoded = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert encoded[1:-1] == ids + [ids[-1], ids[-1]]
    assert tiny_tokenizer.pad_token == "<|endoftext|>"
    assert tiny_tokenizer.eos_token == "<|im_end|>"
    assert tiny_tokenizer.unk_token == "<unk>"


def test_any_text_round_trips(tiny_tokenizer):
    for text in ["图中的菜是什么？麻婆豆腐", "  spaces\n\nand tabs\t", "日本語 ✓ émoji 🍜"]:
        ids = tiny_tokenizer.encode(text, add_special_tokens=False)
        assert tiny_tokenizer.decode(ids) == text


def test_training_is_deterministic():
    corpus = ["the duck is roasted", "图中的菜是烤鸭", "the dumplings are steamed"] * 3
    first, second = (train_tokenizer(corpus, vocab_size=300) for _ in range(2))
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_save_load_round_trip(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "<|im_start|>user\n图中的菜是什么？<img><IMG_CONTEXT></img><|im_end|>"
    assert loaded.encode(text) == tiny_tokenizer.encode(text)
    assert (loaded.pad_token_id, loaded.eos_token_id) == (
        tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id)
    assert loaded.chat_template == tiny_tokenizer.chat_template
    assert loaded.model_max_length >= 100_000


def test_chat_template_matches_our_rendering(tiny_tokenizer):
    for system in [None, "", "You are a food expert."]:
        ours = render_conversation(TWO_TURNS, template=INTERNLM2, system=system)
        theirs = tiny_tokenizer.apply_chat_template(_messages(TWO_TURNS, system), tokenize=False)
        assert theirs == ours

from __future__ import annotations

import pytest

from vlmtune.data.templates import (
    IGNORE_INDEX,
    INTERNLM2,
    INTERNVL2_SYSTEM,
    encode_conversation,
    encode_prompt,
    encode_reply,
    get_template,
)
from vlmtune.errors import ConfigError, DataError

BLOCK = "<img>" + "<IMG_CONTEXT>" * 4 + "</img>"


def turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


@pytest.fixture
def enc(tiny_tokenizer):
    return lambda text: tiny_tokenizer.encode(text, add_special_tokens=False)


def test_one_turn_labels_only_the_reply_and_im_end(tiny_tokenizer, enc):
    ids, labels = encode_conversation(
        tiny_tokenizer, turns("<image>\n图中的菜是什么？", "北京烤鸭"),
        template=INTERNLM2, image_blocks=[BLOCK],
    )
    prompt = enc(
        f"<|im_start|>system\n{INTERNVL2_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{BLOCK}\n图中的菜是什么？<|im_end|>\n<|im_start|>assistant\n"
    )
    reply = enc("北京烤鸭") + [tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    newline = enc("\n")
    assert ids == prompt + reply + newline
    assert labels == [IGNORE_INDEX] * len(prompt) + reply + [IGNORE_INDEX] * len(newline)
    image_ids = {tiny_tokenizer.convert_tokens_to_ids(t) for t in ("<img>", "</img>",
                                                                    "<IMG_CONTEXT>")}
    assert sum(i in image_ids for i in ids) == 6
    assert not any(lab in image_ids for lab in labels)


def test_two_turns_and_no_system_block(tiny_tokenizer, enc):
    ids, labels = encode_conversation(
        tiny_tokenizer, turns("What dish?", "Peking duck.", "Where from?", "Beijing."),
        template=INTERNLM2, system="",
    )
    runs = [
        (enc("<|im_start|>user\nWhat dish?<|im_end|>\n<|im_start|>assistant\n"), False),
        (enc("Peking duck.<|im_end|>"), True),
        (enc("\n<|im_start|>user\nWhere from?<|im_end|>\n<|im_start|>assistant\n"), False),
        (enc("Beijing.<|im_end|>"), True),
        (enc("\n"), False),
    ]
    assert ids == [t for run, _ in runs for t in run]
    assert labels == [t if sup else IGNORE_INDEX for run, sup in runs for t in run]
    assert "system" not in tiny_tokenizer.decode(ids)


def test_custom_system_prompt(tiny_tokenizer):
    ids, _ = encode_conversation(tiny_tokenizer, turns("q", "a"), template=INTERNLM2,
                                 system="Be brief.")
    assert tiny_tokenizer.decode(ids).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


@pytest.mark.parametrize("system", [None, "", "Be brief."])
def test_prompt_plus_reply_is_one_turn_conversation(tiny_tokenizer, system):
    question, answer = "<image>\n图中的菜是什么？选项有：（A) 烤鸭", "A"
    ids, labels = encode_conversation(tiny_tokenizer, turns(question, answer),
                                      template=INTERNLM2, image_blocks=[BLOCK], system=system)
    prompt = encode_prompt(tiny_tokenizer, question, template=INTERNLM2, image_blocks=[BLOCK],
                           system=system)
    reply = encode_reply(tiny_tokenizer, answer, INTERNLM2)
    newline = tiny_tokenizer.encode("\n", add_special_tokens=False)
    assert prompt + reply + newline == ids
    assert labels[len(prompt):len(prompt) + len(reply)] == reply


def test_prompt_matches_chat_template_generation_prompt(tiny_tokenizer):
    prompt = encode_prompt(tiny_tokenizer, "图中的菜是什么？", template=INTERNLM2)
    theirs = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": "图中的菜是什么？"}], add_generation_prompt=True,
        tokenize=True, return_dict=False,
    )
    assert prompt == list(theirs)


def test_images_fill_placeholders_in_order(tiny_tokenizer):
    a, b = "<img><IMG_CONTEXT></img>", "<img><IMG_CONTEXT><IMG_CONTEXT></img>"
    ids, _ = encode_conversation(tiny_tokenizer, turns("<image> x <image>", "y"),
                                 template=INTERNLM2, image_blocks=[a, b], system="")
    assert f"user\n{a} x {b}<|im_end|>" in tiny_tokenizer.decode(ids)


@pytest.mark.parametrize(
    ("conversations", "blocks", "reason"),
    [
        ([], [], "bad_roles"),
        ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}], [], "bad_roles"),
        (turns("q", "a", "q2"), [], "bad_roles"),
        ([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}], [], "bad_roles"),
        (turns("q", "  "), [], "empty_turn"),
        (turns("", "a"), [], "empty_turn"),
        (turns("<image> q", "a"), [], "image_count_mismatch"),
        (turns("q", "a"), [BLOCK], "image_count_mismatch"),
        (turns("<image><image> q", "a"), [BLOCK], "image_count_mismatch"),
    ],
)
def test_bad_conversations_raise_data_error(tiny_tokenizer, conversations, blocks, reason):
    with pytest.raises(DataError) as info:
        encode_conversation(tiny_tokenizer, conversations, template=INTERNLM2,
                            image_blocks=blocks)
    assert info.value.reason == reason


def test_get_template():
    assert get_template("internlm2") is INTERNLM2
    with pytest.raises(ConfigError, match="model.chat_template"):
        get_template("nope")

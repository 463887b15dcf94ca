"""Templates × the three real tokenizer kinds: BOS where the tokenizer puts it, labels only on
the assistant's tokens + end marker, vicuna_v1 byte-exact to LLaVA's conv_vicuna_v1."""

from __future__ import annotations

import pytest

from vlmtune.data.templates import (
    IGNORE_INDEX,
    TEMPLATES,
    VICUNA_SYSTEM,
    VICUNA_V1,
    bos_ids,
    encode_conversation,
    encode_prompt,
    encode_reply,
    get_template,
    render_conversation,
    render_prompt,
    stop_token_ids,
)

KINDS = ("internlm2", "llama", "qwen2")
BLOCK = "<img>" + "<IMG_CONTEXT>" * 3 + "</img>"
REPLIES = ("Peking duck.", "我选择（A)。北京")


def two_turns(first_question="<image>\nWhat dish is shown in the picture?"):
    return [{"from": "human", "value": first_question},
            {"from": "gpt", "value": REPLIES[0]},
            {"from": "human", "value": "图中的菜是什么？"},
            {"from": "gpt", "value": REPLIES[1]}]


def supervised_runs(ids, labels):
    runs, current = [], []
    for tok, lab in zip(ids, labels, strict=True):
        if lab != IGNORE_INDEX:
            assert lab == tok
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("kind", KINDS)
def test_bos_is_the_tokenizers_own(tokenizer_kinds, kind):
    tok = tokenizer_kinds[kind]
    expected = {"internlm2": ["<s>"], "llama": ["<s>"], "qwen2": []}[kind]
    assert tok.convert_ids_to_tokens(bos_ids(tok)) == expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_labels_only_on_replies_and_end_for_every_template_and_kind(tokenizer_kinds, kind,
                                                                    name):
    tok, template = tokenizer_kinds[kind], get_template(name)
    ids, labels = encode_conversation(tok, two_turns(), template=template, image_blocks=[BLOCK])
    has_bos = kind in ("internlm2", "llama")
    # BOS once, first, unsupervised; nowhere else
    assert (ids[0] == tok.bos_token_id) is has_bos
    assert ids.count(tok.bos_token_id) == (1 if has_bos else 0) or tok.bos_token_id is None
    assert labels[0] == IGNORE_INDEX
    # the rest is the whole chat string tokenized at once
    text = render_conversation(two_turns(), template=template, image_blocks=[BLOCK])
    assert ids[1 if has_bos else 0:] == tok.encode(text, add_special_tokens=False)
    runs = supervised_runs(ids, labels)
    assert len(runs) == 2
    for run, reply in zip(runs, REPLIES, strict=True):
        decoded = tok.decode(run, skip_special_tokens=False)
        assert decoded.lstrip(" ") == reply + template.end, (decoded, reply)
    image_ids = {tok.convert_tokens_to_ids(t) for t in ("<img>", "</img>", "<IMG_CONTEXT>")}
    assert not any(lab in image_ids for lab in labels)


# LLaVA's conv_vicuna_v1 (SeparatorStyle.TWO, sep " ", sep2 "</s>"), written out by hand.
LLAVA_ONE_TURN = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions. "
    "USER: <image>\nWhat dish is shown in the picture? ASSISTANT: Peking duck.</s>")
LLAVA_TWO_TURNS = LLAVA_ONE_TURN + "USER: 图中的菜是什么？ ASSISTANT: 我选择（A)。北京</s>"
LLAVA_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions. "
    "USER: <image>\nWhat dish is shown in the picture? ASSISTANT:")


def test_vicuna_v1_strings_are_llavas_byte_for_byte():
    turns = two_turns()
    assert render_conversation(turns[:2], template=VICUNA_V1, image_blocks=["<image>"]) == \
        LLAVA_ONE_TURN
    assert render_conversation(turns, template=VICUNA_V1, image_blocks=["<image>"]) == \
        LLAVA_TWO_TURNS
    assert render_prompt(turns[0]["value"], template=VICUNA_V1, image_blocks=["<image>"]) == \
        LLAVA_PROMPT
    assert VICUNA_V1.system == VICUNA_SYSTEM


@pytest.mark.parametrize("turns", [2, 4])
def test_vicuna_v1_tokenized_as_llava_tokenizes_it(tokenizer_kinds, turns):
    tok = tokenizer_kinds["llama"]
    conversation = two_turns()[:turns]
    expected = LLAVA_ONE_TURN if turns == 2 else LLAVA_TWO_TURNS
    ids, labels = encode_conversation(tok, conversation, template=VICUNA_V1,
                                      image_blocks=["<image>"])
    # LLaVA: tokenizer(prompt).input_ids — the whole prompt at once, BOS first
    assert ids == tok(expected).input_ids
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<s>", "▁A"]
    # the supervision starts at the reply's first word and ends with </s>
    runs = supervised_runs(ids, labels)
    assert [tok.convert_ids_to_tokens(r)[-1] for r in runs] == ["</s>"] * (turns // 2)
    assert tok.convert_ids_to_tokens(runs[0])[0].startswith("▁")  # the space is the reply's
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE_INDEX)
    assert tok.convert_ids_to_tokens(ids[first - 1]) == ":"  # … "ASSISTANT:" unsupervised
    prompt = encode_prompt(tok, conversation[0]["value"], template=VICUNA_V1,
                           image_blocks=["<image>"])
    assert prompt == tok(LLAVA_PROMPT).input_ids
    assert tok.decode(prompt, skip_special_tokens=True).endswith("ASSISTANT:")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_prompt_plus_reply_equals_the_conversation(tokenizer_kinds, kind, name):
    tok, template = tokenizer_kinds[kind], get_template(name)
    turns = two_turns()[:2]
    ids, labels = encode_conversation(tok, turns, template=template, image_blocks=[BLOCK])
    prompt = encode_prompt(tok, turns[0]["value"], template=template, image_blocks=[BLOCK])
    reply = encode_reply(tok, REPLIES[0], template)
    assert ids[:len(prompt) + len(reply)] == prompt + reply
    assert labels[len(prompt):len(prompt) + len(reply)] == reply
    assert set(labels[:len(prompt)]) == {IGNORE_INDEX}


def test_chatml_agrees_with_the_checkpoints_own_chat_template(tokenizer_kinds):
    tok = tokenizer_kinds["internlm2"]  # ships a ChatML chat_template, as InternVL's -hf does
    template, system = get_template("internlm2"), "You are a helpful assistant."
    turns = two_turns("What dish is shown in the picture?")
    messages = [{"role": "system", "content": system}] + [
        {"role": "user" if t["from"] == "human" else "assistant", "content": t["value"]}
        for t in turns]
    theirs_text = tok.apply_chat_template(messages, tokenize=False)
    assert render_conversation(turns, template=template, system=system) == theirs_text
    theirs_ids = tok.apply_chat_template(messages, tokenize=True, return_dict=False)
    ids, _ = encode_conversation(tok, turns, template=template, system=system)
    # InternVL tokenizes its prompt with the tokenizer's defaults: BOS, then the chat text
    assert ids == [tok.bos_token_id] + list(theirs_ids)
    gen = tok.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
    assert render_prompt(turns[0]["value"], template=template, system=system) == gen


def test_stop_ids_follow_the_checkpoints_generation_config(internvl_hf_dir, tokenizer_kinds):
    from transformers import GenerationConfig

    tok = tokenizer_kinds["internlm2"]
    config = GenerationConfig.from_pretrained(internvl_hf_dir)
    im_end, im_start = tok.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    assert tok.eos_token == "</s>"  # the tokenizer's eos alone would never stop a ChatML reply
    assert stop_token_ids(tok, get_template("internlm2"), config) == [im_end, im_start]
    # no generation config: the template's end token
    assert stop_token_ids(tok, get_template("internlm2")) == [im_end]
    assert stop_token_ids(tok, VICUNA_V1) == [tok.convert_tokens_to_ids("</s>")]


def test_any_template_with_any_family():
    from vlmtune.config import compose_recipe, validate
    from vlmtune.errors import ConfigError

    recipe = validate(compose_recipe(["model=tiny_internvl", "model.chat_template=vicuna_v1",
                                      "model.path=/nowhere"]))
    assert recipe.model.chat_template == "vicuna_v1"
    with pytest.raises(ConfigError, match="model.chat_template"):
        validate(compose_recipe(["model=tiny_internvl", "model.chat_template=nope",
                                 "model.path=/nowhere"]))


@pytest.mark.parametrize("kind", KINDS)
def test_forced_reply_start_follows_the_generation_prompt(tokenizer_kinds, kind):
    tok = tokenizer_kinds[kind]
    prompt = encode_prompt(tok, "图中的菜是什么？", template=VICUNA_V1, system="")
    forced = encode_reply(tok, "我选择（", VICUNA_V1, end=False)
    text = tok.decode(prompt + forced, skip_special_tokens=True)
    assert text.lstrip(" ") == "USER: 图中的菜是什么？ ASSISTANT: 我选择（"

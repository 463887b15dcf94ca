"""Chat templates and token-exact label masking for conversation records.

A conversation is rendered as alternating runs of unsupervised text (system, user turns, role
headers, separators, image tokens) and supervised text (each assistant reply, with the
template's reply lead and end marker). The whole string is tokenized at once, as the model's
authors tokenize it (so a SentencePiece tokenizer sees no artificial word starts), and each
token is labelled by where its last character falls. The tokenizer's own prefix (its BOS,
when it adds one) comes first, once, unsupervised.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlmtune.errors import ConfigError, DataError

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"

INTERNVL2_SYSTEM = (
    "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
    "是一个有用无害的人工智能助手。"
)


@dataclass(frozen=True)
class ChatTemplate:
    """How one model family writes a chat: ``{prefix}{text}{end}{separator}`` per message."""

    name: str
    system: str  # default system prompt ("" = none)
    system_prefix: str
    user_prefix: str
    assistant_prefix: str
    end: str  # closes every message; supervised after an assistant reply
    separator: str  # follows every end marker; never supervised
    # Closes system and user messages instead of ``end`` (vicuna: " "); None: ``end``.
    prompt_end: str | None = None
    # Starts every reply (supervised: the model writes it), so it is not part of a generation
    # prompt (vicuna: " ", so that the prompt ends "ASSISTANT:" as LLaVA's does).
    reply_lead: str = ""


INTERNLM2 = ChatTemplate(
    name="internlm2",
    system=INTERNVL2_SYSTEM,
    system_prefix="<|im_start|>system\n",
    user_prefix="<|im_start|>user\n",
    assistant_prefix="<|im_start|>assistant\n",
    end="<|im_end|>",
    separator="\n",
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)

# LLaVA-1.5 / LLaVA-NeXT (LLaVA's conv_vicuna_v1, SeparatorStyle.TWO):
# `{sys} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>`; prompts end "ASSISTANT:".
VICUNA_V1 = ChatTemplate(
    name="vicuna_v1",
    system=VICUNA_SYSTEM,
    system_prefix="",
    user_prefix="USER: ",
    assistant_prefix="ASSISTANT:",
    end="</s>",
    separator="",
    prompt_end=" ",
    reply_lead=" ",
)

TEMPLATES: dict[str, ChatTemplate] = {INTERNLM2.name: INTERNLM2}
TEMPLATES[VICUNA_V1.name] = VICUNA_V1

# Qwen2-VL / Qwen2.5-VL: ChatML as InternLM2 writes it, with Qwen's default system prompt.
QWEN2_CHATML = ChatTemplate(
    name="qwen2_chatml",
    system="You are a helpful assistant.",
    system_prefix="<|im_start|>system\n",
    user_prefix="<|im_start|>user\n",
    assistant_prefix="<|im_start|>assistant\n",
    end="<|im_end|>",
    separator="\n",
)
TEMPLATES[QWEN2_CHATML.name] = QWEN2_CHATML

# BLIP-2 (OPT): `Question: {q} Answer: {a}\n`. LAVIS ends each OPT target with "\n" and stops
# generating there, so "\n" is the supervised end marker.
BLIP2_QA = ChatTemplate(
    name="blip2",
    system="",
    system_prefix="",
    user_prefix="Question: ",
    assistant_prefix="Answer: ",
    end="\n",
    separator="",
    prompt_end=" ",
)
TEMPLATES[BLIP2_QA.name] = BLIP2_QA


def get_template(name: str) -> ChatTemplate:
    """The registered template called ``name``."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigError(
            f"model.chat_template: unknown template {name!r}; choose one of {sorted(TEMPLATES)}"
        ) from None


def validate_conversation(conversations: Any, num_images: int) -> None:
    """Check roles alternate human/gpt (human first, gpt last), turns are non-empty text and
    the ``<image>`` placeholders in human turns match ``num_images``; raise DataError if not."""
    if not isinstance(conversations, list) or not conversations:
        raise DataError("'conversations' must be a non-empty list of turns", reason="bad_roles")
    for i, turn in enumerate(conversations):
        expected = "human" if i % 2 == 0 else "gpt"
        role = turn.get("from") if isinstance(turn, dict) else None
        if role != expected:
            raise DataError(
                f"turn {i} has role {role!r}, expected {expected!r}",
                reason="bad_roles",
                hint="roles must alternate human/gpt, starting with human",
            )
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"turn {i} ({role}) is empty", reason="empty_turn")
    if len(conversations) % 2:
        raise DataError("the last turn is from 'human'; it has no reply", reason="bad_roles")
    found = sum(t["value"].count(IMAGE_PLACEHOLDER) for t in conversations[::2])
    if found != num_images:
        raise DataError(
            f"{found} {IMAGE_PLACEHOLDER} placeholder(s) in human turns but {num_images} image(s)",
            reason="image_count_mismatch",
        )


def render_runs(
    conversations: list[dict],
    *,
    template: ChatTemplate,
    image_blocks: Sequence[str] = (),
    system: str | None = None,
) -> list[tuple[str, bool]]:
    """The conversation as ``(text, supervised)`` runs, alternating, unsupervised first."""
    validate_conversation(conversations, len(image_blocks))
    blocks = iter(image_blocks)
    runs: list[tuple[str, bool]] = []
    pending = _system_block(template, system)
    for question, reply in zip(conversations[::2], conversations[1::2], strict=True):
        parts = question["value"].split(IMAGE_PLACEHOLDER)
        text = parts[0] + "".join(next(blocks) + part for part in parts[1:])
        pending += _user_block(template, text) + template.assistant_prefix
        runs += [(pending, False), (template.reply_lead + reply["value"] + template.end, True)]
        pending = template.separator
    runs.append((pending, False))
    return runs


def render_conversation(
    conversations: list[dict],
    *,
    template: ChatTemplate,
    image_blocks: Sequence[str] = (),
    system: str | None = None,
) -> str:
    """The full chat string, as the tokenizer's own ``chat_template`` would write it."""
    runs = render_runs(conversations, template=template, image_blocks=image_blocks, system=system)
    return "".join(text for text, _ in runs)


def render_prompt(
    question: str,
    *,
    template: ChatTemplate,
    image_blocks: Sequence[str] = (),
    system: str | None = None,
) -> str:
    """The generation prompt: system, one user turn and the assistant header."""
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": "-"}]
    runs = render_runs(turns, template=template, image_blocks=image_blocks, system=system)
    return runs[0][0]


def encode_conversation(
    tokenizer: Any,
    conversations: list[dict],
    *,
    template: ChatTemplate,
    image_blocks: Sequence[str] = (),
    system: str | None = None,
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: the tokenizer's prefix (BOS) once, then the whole conversation
    tokenized at once; labels are the ids of each reply + its end marker, else -100."""
    runs = render_runs(conversations, template=template, image_blocks=image_blocks, system=system)
    ids, labels = _encode_runs(tokenizer, runs)
    prefix = bos_ids(tokenizer)
    return prefix + ids, [IGNORE_INDEX] * len(prefix) + labels


def encode_prompt(
    tokenizer: Any,
    question: str,
    *,
    template: ChatTemplate,
    image_blocks: Sequence[str] = (),
    system: str | None = None,
) -> list[int]:
    """Prompt ids (BOS first when the tokenizer adds one) up to the assistant header, for
    generation and scoring.

    ``encode_prompt(...) + encode_reply(...)`` equals a one-turn ``encode_conversation``
    whenever the tokenizer has a token boundary where the reply starts.
    """
    text = render_prompt(question, template=template, image_blocks=image_blocks, system=system)
    return bos_ids(tokenizer) + _encode(tokenizer, text)


def encode_reply(tokenizer: Any, text: str, template: ChatTemplate, *,
                 end: bool = True) -> list[int]:
    """Ids of an assistant reply (with the template's reply lead) followed by its end marker
    (``end=False``: without; e.g. a reply's forced start after a generation prompt), tokenized
    as they are in a conversation, after the assistant header."""
    anchor = template.assistant_prefix
    runs = [(anchor, False), (template.reply_lead + text + (template.end if end else ""), True)]
    if not anchor:
        return _encode(tokenizer, runs[1][0])
    ids, labels = _encode_runs(tokenizer, runs)
    first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
    return ids[first:]


def bos_ids(tokenizer: Any) -> list[int]:
    """The ids the tokenizer itself puts before a text (``[bos]`` for Llama / InternLM2
    SentencePiece tokenizers, ``[]`` for Qwen2's), found from its own ``add_special_tokens``."""
    probe = "a"
    plain = list(tokenizer.encode(probe, add_special_tokens=False))
    full = list(tokenizer.encode(probe, add_special_tokens=True))
    return next((full[:i] for i in range(len(full) - len(plain) + 1)
                 if full[i:i + len(plain)] == plain), [])


def starts_with_bos(tokenizer: Any, input_ids: Sequence[int]) -> bool:
    """Whether ``input_ids`` start with the tokenizer's BOS token."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and len(input_ids) > 0 and int(input_ids[0]) == bos


def stop_token_ids(tokenizer: Any, template: ChatTemplate,
                   generation_config: Any = None) -> list[int]:
    """Where generation stops: the checkpoint's ``generation_config`` eos ids, plus the
    template's end marker when it is one token; the tokenizer's eos only when neither says."""
    ids: list[int] = []
    eos = getattr(generation_config, "eos_token_id", None)
    ids += [int(i) for i in (eos if isinstance(eos, list | tuple) else [eos]) if i is not None]
    end = tokenizer.encode(template.end, add_special_tokens=False) if template.end else []
    if len(end) == 1:
        ids.append(int(end[0]))
    if not ids and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    return list(dict.fromkeys(ids))


def to_jinja(template: ChatTemplate) -> str:
    """A Jinja ``chat_template`` (roles system/user/assistant) that renders like this module.

    A leading system message replaces the default system prompt; an empty one drops the block.
    """

    def q(text: str) -> str:
        return json.dumps(text, ensure_ascii=False)

    lead = q(template.reply_lead)
    end_sep = q(template.end + template.separator)
    prompt_end_sep = q(_prompt_end(template) + template.separator)
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}"
        f"{{%- set system = {q(template.system)} -%}}{{%- set turns = messages -%}}"
        "{%- endif -%}"
        f"{{%- if system -%}}{{{{ {q(template.system_prefix)} + system + {prompt_end_sep} }}}}"
        "{%- endif -%}"
        "{%- for message in turns -%}"
        "{%- if message['role'] == 'user' -%}"
        f"{{{{ {q(template.user_prefix)} + message['content'] + {prompt_end_sep} }}}}"
        "{%- else -%}"
        f"{{{{ {q(template.assistant_prefix)} + {lead} + message['content'] + {end_sep} }}}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{ {q(template.assistant_prefix)} }}}}"
        "{%- endif -%}"
    )


def _system_block(template: ChatTemplate, system: str | None) -> str:
    text = template.system if system is None else system
    end = _prompt_end(template)
    return f"{template.system_prefix}{text}{end}{template.separator}" if text else ""


def _user_block(template: ChatTemplate, text: str) -> str:
    return f"{template.user_prefix}{text}{_prompt_end(template)}{template.separator}"


def _prompt_end(template: ChatTemplate) -> str:
    return template.end if template.prompt_end is None else template.prompt_end


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


def _encode_runs(tokenizer: Any, runs: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """Tokenize the joined runs at once; a token is supervised when its last character is in a
    supervised run. Tokenizers without offsets (slow ones) encode run by run instead."""
    if not getattr(tokenizer, "is_fast", False):
        ids: list[int] = []
        labels: list[int] = []
        for text, supervised in runs:
            part = _encode(tokenizer, text)
            ids += part
            labels += part if supervised else [IGNORE_INDEX] * len(part)
        return ids, labels
    text = "".join(t for t, _ in runs)
    if not text:
        return [], []
    supervised_chars = bytearray(len(text))
    pos = 0
    for part, supervised in runs:
        if supervised:
            supervised_chars[pos:pos + len(part)] = b"\x01" * len(part)
        pos += len(part)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [tok if end > start and supervised_chars[end - 1] else IGNORE_INDEX
              for tok, (start, end) in zip(ids, enc["offset_mapping"], strict=True)]
    return ids, labels

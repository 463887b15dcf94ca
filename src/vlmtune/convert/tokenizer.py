"""An official checkpoint's tokenizer → a fast tokenizer that encodes exactly as the original.

InternLM2 ships a SentencePiece ``tokenizer.model`` with remote code (``InternLM2Tokenizer``:
BOS ``<s>`` first, no dummy prefix). It becomes a ``LlamaTokenizerFast`` built from the
model's vocab and merges with no prefix space (``legacy=False``, prepend scheme "never"),
pad ``</s>``, and every added token (``<img>``, ``</img>``, ``<IMG_CONTEXT>``, ``<|im_start|>``,
``<|im_end|>`` …) at its original id. A tokenizer that transformers already loads natively
(Qwen2's, Llama 3's) is loaded and saved as is. Either way the chat template the source's
``template`` names is set (ChatML, with InternVL's default system prompt).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmtune.data.templates import INTERNVL2_SYSTEM
from vlmtune.errors import CheckpointError

# InternVL's conversation templates that are ChatML, with the system prompt InternVL sets.
CHATML_TEMPLATES = {"internlm2-chat": INTERNVL2_SYSTEM, "Hermes-2": INTERNVL2_SYSTEM,
                    "internvl2_5": INTERNVL2_SYSTEM}


def chatml_template(system: str) -> str:
    """A ChatML ``chat_template`` whose default system prompt is ``system``."""
    default = json.dumps(system, ensure_ascii=False)
    return (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\n' + " + default + " + '<|im_end|>\\n' }}{% endif %}"
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


def template_for(template_name: str | None) -> str | None:
    if template_name is None:
        return None
    if template_name not in CHATML_TEMPLATES:
        raise CheckpointError(f"config.json template={template_name!r}: no chat template is "
                              f"known for it; known: {', '.join(CHATML_TEMPLATES)}")
    return chatml_template(CHATML_TEMPLATES[template_name])


def is_sentencepiece(src: Path) -> bool:
    return (Path(src) / "tokenizer.model").exists() and not (Path(src) / "tokenizer.json").exists()


def convert_tokenizer(src: Path, out: Path, *, template_name: str | None) -> Any:
    """Write the fast tokenizer of ``src`` to ``out`` and return it."""
    src = Path(src)
    tokenizer = _from_sentencepiece(src) if is_sentencepiece(src) else _native(src)
    template = template_for(template_name)
    if template is not None:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    return tokenizer


def _native(src: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{src}: its tokenizer needs remote code and has no "
                              f"tokenizer.model to convert ({err})") from err


def _from_sentencepiece(src: Path) -> Any:
    from tokenizers import AddedToken
    from tokenizers.models import BPE
    from transformers import LlamaTokenizerFast
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    config_file = src / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    pieces = SentencePieceExtractor(str(src / "tokenizer.model")).extract(BPE)
    vocab = pieces["vocab"]
    tokenizer = LlamaTokenizerFast(
        vocab=vocab, merges=pieces["merges"], legacy=False, add_prefix_space=False,
        add_bos_token=config.get("add_bos_token", True),
        add_eos_token=config.get("add_eos_token", False),
        bos_token=_content(config.get("bos_token", "<s>")),
        eos_token=_content(config.get("eos_token", "</s>")),
        unk_token=_content(config.get("unk_token", "<unk>")),
        pad_token=_content(config.get("pad_token") or "</s>"),
        model_max_length=config.get("model_max_length", 1_000_000),
    )
    added = sorted(((int(i), t) for i, t in config.get("added_tokens_decoder", {}).items()))
    for token_id, spec in added:
        token = AddedToken(spec["content"], special=spec.get("special", True),
                           lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                           normalized=spec.get("normalized", False),
                           single_word=spec.get("single_word", False))
        tokenizer.add_tokens([token], special_tokens=spec.get("special", True))
        got = tokenizer.convert_tokens_to_ids(spec["content"])
        if got != token_id:
            raise CheckpointError(f"{config_file}: added token {spec['content']!r} has id "
                                  f"{token_id}, the converted tokenizer gives it {got}")
    return tokenizer


def _content(token: Any) -> str:
    return token["content"] if isinstance(token, dict) else str(token)

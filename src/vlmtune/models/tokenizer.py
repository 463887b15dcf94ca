"""A small byte-level BPE tokenizer trained locally, for tiny test models (no download)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vlmtune.data.templates import INTERNLM2, ChatTemplate, to_jinja

UNK = "<unk>"
PAD = "<|endoftext|>"
EOS = "<|im_end|>"
CHAT_TOKENS = [UNK, PAD, "<|im_start|>", EOS]
IMAGE_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>"]  # InternVL's, the default
SPECIAL_TOKENS = CHAT_TOKENS + IMAGE_TOKENS


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2000,
                    image_tokens: Sequence[str] = IMAGE_TOKENS,
                    template: ChatTemplate = INTERNLM2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``, with ``template`` as its chat template.

    Any text encodes (every byte is in the alphabet); the special tokens are single ids that
    are never split. The same texts give the same tokenizer.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*CHAT_TOKENS, *image_tokens],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        pad_token=PAD,
        eos_token=EOS,
        extra_special_tokens=["<|im_start|>", *image_tokens],
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
        chat_template=to_jinja(template),
    )

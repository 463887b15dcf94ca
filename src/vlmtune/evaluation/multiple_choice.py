"""Multiple-choice accuracy: by choice log-likelihood, or by greedy generation + letter parse.

Likelihood: each option's answer text (as training renders it, e.g. ``B) 饺子`` + end marker)
is scored by its summed token log-probability after the prompt; the best one is the answer
(each prediction row also keeps the per-token mean). The prompts (system + question + image) of
a batch of items run once, left-padded, with a KV cache, and every option's continuation is
scored from its item's cache rows in one batch, so each image is encoded once per item, not
once per option. Qwen2-VL, whose later positions follow from its prefill, prefills item by
item; a model whose forward needs the pixels on every call (BLIP-2's Q-Former prefix) scores
each option whole. Generation is batched too (left padding, KV cache, greedy, each row
stopped at its own stop id) and gives each row the ids it gets alone.
Generation: the FoodieQA authors' parse, the first of the item's letters in the output; an
output without one is counted as ``unparsed`` and wrong (not replaced by a random letter).
"""

from __future__ import annotations

import inspect
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmtune.data.foodieqa import target_text
from vlmtune.data.images import open_image
from vlmtune.data.templates import ChatTemplate, encode_prompt, encode_reply, stop_token_ids
from vlmtune.errors import DataError
from vlmtune.models.loading import LoadedModel
from vlmtune.progress import progress_bar


@dataclass
class MCItem:
    id: str
    question_type: str
    question: str
    images: list[Path]
    choices: list[str]
    letters: str
    answer: int
    lang: str
    task: str = "sivqa"
    # Text the template puts at the start of the assistant turn (e.g. "我选择（").
    assistant_prefix: str = ""

    def reply(self, index: int) -> str:
        """The assistant turn that answers option ``index``, as training renders it."""
        return self.assistant_prefix + target_text(self.task, self.choices, index)


def load_items(jsonl: Path, image_root: Path, limit: int | None = None) -> list[MCItem]:
    items = []
    with jsonl.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if limit is not None and len(items) >= limit:
                break
            rec = json.loads(line)
            meta = rec.get("meta") or {}
            if "answer_index" not in meta or "choices" not in meta:
                raise DataError("record has no multiple-choice metadata (meta.answer_index, "
                                "meta.choices)", reason="not_multiple_choice", file=str(jsonl),
                                line=line_no)
            images = rec.get("image") or []
            images = [images] if isinstance(images, str) else images
            items.append(MCItem(
                id=str(rec["id"]), question_type=str(meta.get("question_type") or "all"),
                question=rec["conversations"][0]["value"],
                images=[image_root / p for p in images], choices=list(meta["choices"]),
                letters=meta.get("letters", "ABCD"), answer=int(meta["answer_index"]),
                lang=meta.get("lang", "zh"), task=meta.get("task", "sivqa"),
                assistant_prefix=meta.get("assistant_prefix") or ""))
    return items


def parse_letter(text: str, letters: str = "ABCD") -> int | None:
    """Index of the first of ``letters`` in ``text``, or None."""
    match = re.search(f"[{re.escape(letters)}]", text)
    return letters.index(match.group(0)) if match else None


class MultipleChoiceScorer:
    def __init__(self, loaded: LoadedModel, template: ChatTemplate, system: str | None) -> None:
        self.lm, self.template, self.system = loaded, template, system
        self.tok = loaded.tokenizer

    def _prompt(self, item: MCItem) -> tuple[list[int], dict[str, torch.Tensor]]:
        encoded = self.lm.images.encode([open_image(path) for path in item.images])
        ids = encode_prompt(self.tok, item.question, template=self.template,
                            image_blocks=encoded.blocks, system=self.system)
        return ids, encoded.tensors

    def _device(self) -> torch.device:
        return next(self.lm.model.parameters()).device

    def _image_inputs(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        joined = self.lm.images.collate([p for p in parts if p])
        dtype, device = self.lm.model.dtype, self._device()
        return {k: v.to(device, dtype) if v.is_floating_point() else v.to(device)
                for k, v in joined.items()}

    @torch.no_grad()
    def likelihood(self, items: list[MCItem], batch_size: int, label: str) -> list[dict]:
        preds = []
        with progress_bar(f"eval {label} (likelihood)", total=len(items)) as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                if _needs_pixels_every_call(self.lm.model):
                    scores = self._score_whole(chunk)
                elif _positions_from_prefill(self.lm.model):
                    scores = [self._score_cached(item) for item in chunk]
                else:
                    scores = self._score_cached_batch(chunk)
                for item, token_logps in zip(chunk, scores, strict=True):
                    sums = [float(t.sum()) for t in token_logps]
                    best = max(range(len(sums)), key=sums.__getitem__)
                    preds.append(_prediction(item, best, scores=sums,
                                             mean_scores=[float(t.mean()) for t in token_logps]))
                bar.update(advance=len(chunk))
        return preds

    def _score_cached(self, item: MCItem) -> list[torch.Tensor]:
        """Each option's token log-probabilities: the prompt once (with the image, cached),
        then every option's continuation from the cache, in one batch."""
        prompt, tensors = self._prompt(item)
        replies = [encode_reply(self.tok, item.reply(i), self.template)
                   for i in range(len(item.choices))]
        device = self._device()
        _forget_positions(self.lm.model)
        prefix = torch.tensor([prompt], device=device)
        out = self.lm.model(input_ids=prefix, attention_mask=torch.ones_like(prefix),
                            use_cache=True, **self._image_inputs([tensors]))
        first = F.log_softmax(out.logits[0, -1].float(), dim=-1)  # each reply's first token
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(replies))
        # Right-padded and causal: no real token sees the padding after it, so no mask is
        # needed (and positions follow the cache, as in generation, for every family).
        ids = _pad(replies, self.tok.pad_token_id, left=False)[0].to(device)
        logits = self.lm.model(input_ids=ids, past_key_values=cache, use_cache=True).logits
        scores = []
        for row, reply in enumerate(replies):
            rest = _token_logps(logits[row, :len(reply) - 1], ids[row, 1:len(reply)])
            scores.append(torch.cat([first[reply[0]].reshape(1).cpu(), rest]))
        return scores

    def _score_cached_batch(self, chunk: list[MCItem]) -> list[list[torch.Tensor]]:
        """:meth:`_score_cached` for several items at once: their prompts left-padded in one
        forward (each image encoded once), then every item's options from its cache rows."""
        prompts = [self._prompt(item) for item in chunk]
        replies, owners = [], []
        for k, item in enumerate(chunk):
            for i in range(len(item.choices)):
                replies.append(encode_reply(self.tok, item.reply(i), self.template))
                owners.append(k)
        device = self._device()
        ids, mask = _pad([p for p, _ in prompts], self.tok.pad_token_id, left=True)
        ids, mask = ids.to(device), mask.to(device)
        out = self.lm.model(input_ids=ids, attention_mask=mask, use_cache=True,
                            **self._image_inputs([t for _, t in prompts]))
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()  # last column: real
        cache = out.past_key_values
        rows = torch.tensor(owners, device=device)
        cache.reorder_cache(rows)  # one cache row per option, its item's
        # Options right-padded after the left-padded prompts: the mask hides the prompts'
        # padding; positions run on from the padded width, the same shift for a row's prompt
        # and options (rotary attention sees only the distance).
        reply_ids = _pad(replies, self.tok.pad_token_id, left=False)[0].to(device)
        full = torch.cat([mask[rows], torch.ones_like(reply_ids)], dim=1)
        logits = self.lm.model(input_ids=reply_ids, attention_mask=full, past_key_values=cache,
                               use_cache=True).logits
        scores: list[list[torch.Tensor]] = [[] for _ in chunk]
        for row, (reply, owner) in enumerate(zip(replies, owners, strict=True)):
            rest = _token_logps(logits[row, :len(reply) - 1], reply_ids[row, 1:len(reply)])
            scores[owner].append(torch.cat([first[owner, reply[0]].reshape(1), rest]))
        return scores

    def _score_whole(self, chunk: list[MCItem]) -> list[list[torch.Tensor]]:
        """Each option's token log-probabilities, from prompt + option run whole (the image is
        encoded once per option)."""
        seqs, spans, parts, owners = [], [], [], []
        for k, item in enumerate(chunk):
            prompt, tensors = self._prompt(item)
            for i in range(len(item.choices)):
                reply = encode_reply(self.tok, item.reply(i), self.template)
                seqs.append(prompt + reply)
                spans.append((len(prompt), len(reply)))
                owners.append(k)
                parts.append(tensors)
        input_ids, attention = _pad(seqs, self.tok.pad_token_id, left=False)
        device = self._device()
        input_ids = input_ids.to(device)
        logits = self.lm.model(input_ids=input_ids, attention_mask=attention.to(device),
                               **self._image_inputs(parts)).logits
        scores: list[list[torch.Tensor]] = [[] for _ in chunk]
        for row, ((p_len, r_len), owner) in enumerate(zip(spans, owners, strict=True)):
            scores[owner].append(_token_logps(logits[row, p_len - 1:p_len - 1 + r_len],
                                              input_ids[row, p_len:p_len + r_len]))
        return scores

    @torch.no_grad()
    def generate_ids(self, prompts: list[tuple[list[int], dict[str, torch.Tensor]]],
                     max_new_tokens: int) -> list[list[int]]:
        """Greedy continuations of a batch of prompts (ids + image tensors), one call.

        Left-padded with an attention mask (generation derives each row's positions from it)
        and the KV cache on; each row stops at its first stop id (the checkpoint's eos ids and
        the template's end token), kept as its last token, and rows that stopped wait as
        padding for the rest. Each row's ids equal those of generating it alone.
        """
        input_ids, attention = _pad([ids for ids, _ in prompts], self.tok.pad_token_id,
                                    left=True)
        device = self._device()
        stops = stop_token_ids(self.tok, self.template, self.lm.model.generation_config)
        out = self.lm.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device),
            **self._image_inputs([t for _, t in prompts]),
            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tok.pad_token_id,
            eos_token_id=stops)
        return [_until_stop(row.tolist(), set(stops)) for row in out[:, input_ids.shape[1]:]]

    @torch.no_grad()
    def generate(self, items: list[MCItem], batch_size: int, max_new_tokens: int,
                 label: str) -> list[dict]:
        preds = []
        with progress_bar(f"eval {label} (generate)", total=len(items)) as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                prompts = [self._prompt(item) for item in chunk]
                # the template's assistant prefix is part of the prompt (tokenized as in a
                # reply, after the template's reply lead); only new text is parsed
                prompts = [(ids + (encode_reply(self.tok, item.assistant_prefix, self.template,
                                                end=False) if item.assistant_prefix else []),
                            tensors) for item, (ids, tensors) in zip(chunk, prompts, strict=True)]
                for item, row in zip(chunk, self.generate_ids(prompts, max_new_tokens),
                                     strict=True):
                    text = self.tok.decode(row, skip_special_tokens=True)
                    preds.append(_prediction(item, parse_letter(text, item.letters), output=text))
                bar.update(advance=len(chunk))
        return preds


def summarize(preds: list[dict]) -> dict[str, Any]:
    """Overall and per-question-type accuracy; unparsed answers counted (and wrong)."""
    by_type: dict[str, list[bool]] = defaultdict(list)
    for p in preds:
        by_type[p["question_type"]].append(p["correct"])
    n = len(preds)
    return {
        "n": n,
        "accuracy": sum(p["correct"] for p in preds) / n if n else 0.0,
        "unparsed": sum(p["pred"] is None for p in preds),
        "per_type": {t: {"n": len(v), "accuracy": sum(v) / len(v)}
                     for t, v in sorted(by_type.items())},
    }


def _prediction(item: MCItem, pred: int | None, **extra: Any) -> dict:
    return {"id": item.id, "question_type": item.question_type,
            "answer": item.letters[item.answer],
            "pred": None if pred is None else item.letters[pred],
            "correct": pred == item.answer, **extra}


def _token_logps(step_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target_t | ...) per position, in fp32, on the CPU."""
    logp = F.log_softmax(step_logits.float(), dim=-1)
    return logp.gather(1, targets[:, None])[:, 0].cpu()


def _until_stop(row: list[int], stops: set[int]) -> list[int]:
    """``row`` up to and including its first stop id (the padding after it dropped)."""
    end = next((i for i, t in enumerate(row) if t in stops), None)
    return row if end is None else row[:end + 1]


def _needs_pixels_every_call(model: Any) -> bool:
    """Whether the model's forward requires ``pixel_values`` (so no call can reuse a cache)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    param = inspect.signature(base.forward).parameters.get("pixel_values")
    return param is not None and param.default is inspect.Parameter.empty


def _positions_from_prefill(model: Any) -> bool:
    """Whether the model derives positions of later calls from its prefill (Qwen2-VL's 3-D
    rotary positions, ``get_rope_index``): a prefill of several items then cannot be split
    into per-option rows, so each item is prefilled on its own."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return any(hasattr(m, "get_rope_index") for m in (base, getattr(base, "model", None)))


def _forget_positions(model: Any) -> None:
    """Drop positions a model kept from its last prefill (Qwen2-VL's ``rope_deltas``): a
    text-only prompt does not recompute them, so its options would be placed by the previous
    item's image layout."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for module in (base, getattr(base, "model", None)):
        if module is not None and hasattr(module, "rope_deltas"):
            module.rope_deltas = None


def _pad(seqs: list[list[int]], pad_id: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask

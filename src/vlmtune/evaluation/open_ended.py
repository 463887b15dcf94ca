"""Open-ended evaluation: held-out loss / perplexity and exact match / token-F1 of generation.

Any conversation record is an item: the reference is its last assistant turn. ``likelihood``
scores every assistant turn teacher-forced (loss = mean NLL per assistant token, perplexity =
exp of it, over all items' tokens); ``generate`` decodes greedily after the last user turn and
compares with the reference after normalisation (case, Unicode width, punctuation, whitespace),
words as tokens, each CJK character a token of its own.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vlmtune.data.images import open_image
from vlmtune.data.templates import IGNORE_INDEX, ChatTemplate, encode_conversation
from vlmtune.evaluation.multiple_choice import MultipleChoiceScorer, _pad
from vlmtune.models.loading import LoadedModel
from vlmtune.progress import progress_bar

CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
TOKEN_RE = re.compile(f"[{CJK}]|[^\\s{CJK}]+")


@dataclass
class OpenItem:
    id: str
    turns: list[dict]
    images: list[Path]
    meta: dict = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return self.turns[-1]["value"]

    @property
    def question(self) -> str:
        return self.turns[-2]["value"].replace("<image>", "").strip()


def is_multiple_choice(record: dict) -> bool:
    """A record the multiple-choice scorers can score: ``meta.answer_index`` + ``meta.choices``."""
    meta = record.get("meta") or {}
    return isinstance(meta, dict) and "answer_index" in meta and "choices" in meta


def records_kind(jsonl: Path, limit: int | None = None) -> str:
    """``multiple_choice`` if every record (up to ``limit``) is, else ``open_ended``."""
    with jsonl.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if limit is not None and n >= limit:
                break
            if not is_multiple_choice(json.loads(line)):
                return "open_ended"
    return "multiple_choice"


def load_open_items(jsonl: Path, image_root: Path, limit: int | None = None) -> list[OpenItem]:
    items = []
    with jsonl.open(encoding="utf-8") as fh:
        for line in fh:
            if limit is not None and len(items) >= limit:
                break
            rec = json.loads(line)
            images = rec.get("image") or []
            images = [images] if isinstance(images, str) else images
            items.append(OpenItem(str(rec["id"]), rec["conversations"],
                                  [image_root / p for p in images], rec.get("meta") or {}))
    return items


def normalize(text: str) -> str:
    """Lower case, NFKC, punctuation and symbols removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    """Tokens of the normalised text: words, and each CJK character on its own."""
    return TOKEN_RE.findall(normalize(text))


def exact_match(pred: str, ref: str) -> bool:
    return answer_tokens(pred) == answer_tokens(ref)


def token_f1(pred: str, ref: str) -> float:
    """Harmonic mean of token precision and recall (bags of tokens); 1.0 if both are empty."""
    p, r = answer_tokens(pred), answer_tokens(ref)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


class OpenEndedScorer:
    """Teacher-forced loss and greedy generation over :class:`OpenItem` s."""

    def __init__(self, loaded: LoadedModel, template: ChatTemplate, system: str | None) -> None:
        self.lm, self.template, self.system = loaded, template, system
        self.tok = loaded.tokenizer
        self._mc = MultipleChoiceScorer(loaded, template, system)  # shared image batching

    def _encode(self, item: OpenItem) -> tuple[list[int], list[int], dict[str, torch.Tensor]]:
        encoded = self.lm.images.encode([open_image(path) for path in item.images])
        ids, labels = encode_conversation(self.tok, item.turns, template=self.template,
                                          image_blocks=encoded.blocks, system=self.system)
        return ids, labels, encoded.tensors

    def _device(self) -> torch.device:
        return next(self.lm.model.parameters()).device

    @torch.no_grad()
    def likelihood(self, items: list[OpenItem], batch_size: int, label: str) -> list[dict]:
        """Per item: summed NLL and count of its assistant tokens (replies + end markers)."""
        preds = []
        with progress_bar(f"eval {label} (loss)", total=len(items)) as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                encoded = [self._encode(item) for item in chunk]
                input_ids, attention = _pad([e[0] for e in encoded], self.tok.pad_token_id,
                                            left=False)
                labels, _ = _pad([e[1] for e in encoded], IGNORE_INDEX, left=False)
                device = self._device()
                logits = self.lm.model(input_ids=input_ids.to(device),
                                       attention_mask=attention.to(device),
                                       **self._mc._image_inputs([e[2] for e in encoded])).logits
                targets = labels[:, 1:].to(device)
                nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                      ignore_index=IGNORE_INDEX, reduction="none")
                mask = targets != IGNORE_INDEX
                for item, row_nll, row_mask in zip(chunk, nll, mask, strict=True):
                    preds.append({"id": item.id, "nll": float(row_nll[row_mask].sum()),
                                  "tokens": int(row_mask.sum())})
                bar.update(advance=len(chunk))
        return preds

    @torch.no_grad()
    def generate(self, items: list[OpenItem], batch_size: int, max_new_tokens: int,
                 label: str) -> list[dict]:
        """Greedy reply to each item's last user turn, scored against its last reply."""
        preds = []
        with progress_bar(f"eval {label} (generate)", total=len(items)) as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                prompts = []
                for item in chunk:
                    ids, labels, tensors = self._encode(item)
                    prompts.append((ids[:_last_reply_start(labels)], tensors))
                for item, row in zip(chunk, self._mc.generate_ids(prompts, max_new_tokens),
                                     strict=True):
                    text = self._strip_end(self.tok.decode(row, skip_special_tokens=True))
                    preds.append({"id": item.id, "question": item.question,
                                  "reference": item.reference, "output": text,
                                  "exact_match": exact_match(text, item.reference),
                                  "token_f1": token_f1(text, item.reference)})
                bar.update(advance=len(chunk))
        return preds

    def _strip_end(self, text: str) -> str:
        """The reply up to the template's end marker (if the tokenizer kept it as text)."""
        end = self.template.end.strip()
        return (text.split(end, 1)[0] if end else text).strip()


def summarize_likelihood(preds: list[dict]) -> dict[str, Any]:
    """Token-weighted mean NLL over every item's assistant tokens, and its exponential."""
    tokens = sum(p["tokens"] for p in preds)
    loss = sum(p["nll"] for p in preds) / tokens if tokens else float("nan")
    return {"n": len(preds), "tokens": tokens, "loss": loss,
            "perplexity": math.exp(loss) if tokens else float("nan"), "unparsed": 0}


def summarize_generate(preds: list[dict]) -> dict[str, Any]:
    """Mean exact match and token-F1; ``unparsed`` counts empty outputs (scored 0)."""
    n = len(preds)
    return {"n": n,
            "exact_match": sum(p["exact_match"] for p in preds) / n if n else 0.0,
            "token_f1": sum(p["token_f1"] for p in preds) / n if n else 0.0,
            "unparsed": sum(not p["output"] for p in preds)}


def _last_reply_start(labels: list[int]) -> int:
    """Index where the last supervised run (the final assistant reply) begins."""
    end = max(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    start = end
    while start > 0 and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return start

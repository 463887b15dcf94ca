"""Open-ended VQA: records with one or more reference answers; VQAv2 accuracy, exact match, ANLS.

Records (JSON Lines, or one JSON array): ``{"id", "image"?, "question", "answers": [...]}``
(or ``"answer": "..."``), or LLaVA style ``{"id", "image", "conversations": [human, gpt]}``
whose gpt turn is the reference (``meta.answers`` adds more). Image paths are relative to the
file's folder.

VQAv2 accuracy, on normalised answers (lower case; ``'`` dropped; commas inside numbers
dropped; other punctuation except a decimal point → space; number words zero–ten → digits;
articles a/an/the dropped): with 10 or more references, VQAv2's leave-one-out average — for
each reference, min(1, #other references equal to the prediction / 3), averaged; with fewer,
min(1, #matching references / min(3, #references)) (a single reference is then exact match).
ANLS: max over references of 1 − Levenshtein / max length (lower case, stripped), 0 when that
normalised distance is 0.5 or more.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmtune.errors import DataError

PROMPT_SUFFIX = "Answer the question using a single word or phrase."
PROMPT_NAME = "vqa_short ('{question}\\n" + PROMPT_SUFFIX + "')"
SCORER_NAME = "generate greedy; VQAv2 accuracy, exact match, ANLS(0.5)"
ANLS_THRESHOLD = 0.5
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
           "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
_NUM_COMMA = re.compile(r"(?<=\d),(?=\d)")
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]")


@dataclass
class VQAItem:
    id: str
    question: str
    answers: list[str]
    images: list[Path]


def normalize_answer(text: str) -> str:
    """VQAv2-style normalisation (see the module docstring)."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip().replace("'", "")
    text = _PUNCT.sub(" ", _NUM_COMMA.sub("", text))
    words = [NUMBERS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(pred: str, answers: list[str]) -> float:
    p = normalize_answer(pred)
    refs = [normalize_answer(a) for a in answers]
    if not refs:
        return 0.0
    if len(refs) >= 10:
        scores = [min(1.0, sum(r == p for j, r in enumerate(refs) if j != i) / 3)
                  for i in range(len(refs))]
        return sum(scores) / len(scores)
    return min(1.0, sum(r == p for r in refs) / min(3, len(refs)))


def exact_match(pred: str, answers: list[str]) -> bool:
    p = normalize_answer(pred)
    return any(p == normalize_answer(a) for a in answers)


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def anls(pred: str, answers: list[str], threshold: float = ANLS_THRESHOLD) -> float:
    p = " ".join(pred.lower().split())
    best = 0.0
    for answer in answers:
        a = " ".join(answer.lower().split())
        width = max(len(p), len(a))
        dist = levenshtein(p, a) / width if width else 0.0
        best = max(best, 1.0 - dist if dist < threshold else 0.0)
    return best


def read_records(path: Path, limit: int | None = None) -> list[VQAItem]:
    """VQA items of a JSONL / JSON file; DataError naming the file and line."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = list(enumerate(json.loads(text), start=1))
    else:
        records = [(n, json.loads(line)) for n, line in enumerate(text.splitlines(), start=1)
                   if line.strip()]
    items = []
    for line, rec in records:
        if limit is not None and len(items) >= limit:
            break
        items.append(_item(rec, path, line))
    return items


def _item(rec: Any, path: Path, line: int) -> VQAItem:
    def fail(msg: str) -> DataError:
        return DataError(msg, reason="bad_benchmark_file", file=str(path), line=line)

    if not isinstance(rec, dict):
        raise fail("record is not an object")
    meta = rec.get("meta") or {}
    if "conversations" in rec:
        turns = rec["conversations"]
        if len(turns) < 2:
            raise fail("conversations need a question and a reference answer")
        question = turns[0]["value"].replace("<image>", "").strip()
        answers = [turns[1]["value"], *meta.get("answers", [])]
    else:
        question = rec.get("question")
        answers = rec.get("answers", rec.get("answer"))
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(question, str) or not answers:
            raise fail("record needs `question` and `answers` (or `answer`)")
    answers = [a["answer"] if isinstance(a, dict) else str(a) for a in answers]
    image = rec.get("image") or []
    images = [image] if isinstance(image, str) else list(image)
    return VQAItem(str(rec.get("id", rec.get("question_id", line))), question, answers,
                   [path.parent / p for p in images])


def prompt_text(item: VQAItem) -> str:
    """The user turn given to the model (one ``<image>`` per image first)."""
    return "".join("<image>\n" for _ in item.images) + f"{item.question}\n{PROMPT_SUFFIX}"


def prediction(item: VQAItem, prompt: str, output: str) -> dict[str, Any]:
    acc = vqa_accuracy(output, item.answers)
    return {"id": item.id, "prompt": prompt, "output": output,
            "parsed": output.strip() or None, "unparsed": not output.strip(),
            "answers": item.answers, "correct": acc, "vqa_accuracy": acc,
            "exact_match": exact_match(output, item.answers), "anls": anls(output, item.answers)}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)

    def mean(key: str) -> float:
        return sum(float(r[key]) for r in rows) / n if n else 0.0

    return {"n": n, "vqa_accuracy": mean("vqa_accuracy"), "exact_match": mean("exact_match"),
            "anls": mean("anls"), "unparsed": sum(r["unparsed"] for r in rows)}

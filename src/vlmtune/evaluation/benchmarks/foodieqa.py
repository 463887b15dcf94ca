"""FoodieQA as a benchmark: a whole task file of a FoodieQA root (not the training split).

Records are rendered by the FoodieQA adapter (the same prompt, options and answer marker as
ingest, for the card's ``task``, ``lang`` and ``template``) and scored by the multiple-choice
scorers; an invalid record is an error here, not dropped silently.
"""

from __future__ import annotations

from pathlib import Path

from vlmtune.data.adapters.foodieqa import iter_records, task_file
from vlmtune.errors import DataError
from vlmtune.evaluation.multiple_choice import MCItem


def data_file(root: Path, task: str) -> Path:
    return task_file(root, task)


def load_items(root: Path, *, task: str, lang: str, template: int,
               limit: int | None = None) -> list[MCItem]:
    items = []
    for _file, _line, rec in iter_records(root, task=task, lang=lang, template=template):
        if limit is not None and len(items) >= limit:
            break
        if isinstance(rec, DataError):
            raise rec
        meta = rec["meta"]
        images = rec.get("image") or []
        images = [images] if isinstance(images, str) else images
        items.append(MCItem(
            id=str(rec["id"]), question_type=str(meta.get("question_type") or "all"),
            question=rec["conversations"][0]["value"], images=[root / p for p in images],
            choices=list(meta["choices"]), letters=meta["letters"],
            answer=int(meta["answer_index"]), lang=lang, task=task,
            assistant_prefix=meta.get("assistant_prefix") or ""))
    return items

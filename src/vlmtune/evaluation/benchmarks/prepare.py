"""A benchmark card → its items, kind and provenance (data digest, prompt, scorer).

Kinds: ``multiple_choice`` and ``open_ended`` (the held-out split, as before; FoodieQA cards are
multiple choice), ``mmbench`` and ``vqa``. Provenance goes into each ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmtune.config.schema import BenchmarkConfig
from vlmtune.errors import ConfigError
from vlmtune.evaluation import open_ended
from vlmtune.evaluation.benchmarks import cards, mmbench, vqa
from vlmtune.evaluation.benchmarks import foodieqa as foodieqa_bench
from vlmtune.evaluation.multiple_choice import load_items

MC_PROMPT = "the item's question as ingested (options in the question), chat template {}"
SCORER_NAMES = {"likelihood": "option log-likelihood ({} picks)",
                "generate": "greedy generation + first option letter"}


@dataclass
class Bench:
    card: BenchmarkConfig
    kind: str
    items: list
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.name


def prepare(card: BenchmarkConfig, *, data_dir: Path, image_root: Path, work_dir: Path,
            chat_template: str) -> Bench:
    """Load one card's items. ``data_dir``/``image_root``: the run's ingested split;
    ``work_dir``: where decoded benchmark images go."""
    if card.format == "heldout":
        path = data_dir / f"{card.split}.jsonl"
        kind = heldout_kind(card, path)
        items = (load_items(path, image_root, card.limit) if kind == "multiple_choice"
                 else open_ended.load_open_items(path, image_root, card.limit))
        prompt = MC_PROMPT.format(chat_template)
    elif card.format == "foodieqa":
        kind, path = "multiple_choice", cards.data_file(card)
        items = foodieqa_bench.load_items(cards.resolve_path(card), task=card.task,
                                          lang=card.lang, template=card.template,
                                          limit=card.limit)
        prompt = f"foodieqa {card.task} {card.lang} template {card.template}"
    elif card.format == "mmbench":
        kind, path = "mmbench", cards.data_file(card)
        items = mmbench.with_rotations(mmbench.read_tsv(path))
        if card.limit is not None:
            keep = sorted({i.group for i in items})[:card.limit]
            items = [i for i in items if i.group in set(keep)]
        prompt = mmbench.PROMPT_NAME
        for item in items:
            item.extra["image_path"] = mmbench.image_file(item, work_dir / card.name)
    else:
        kind, path = "vqa", cards.data_file(card)
        items, prompt = vqa.read_records(path, card.limit), vqa.PROMPT_NAME
    if kind in ("multiple_choice", "open_ended"):
        scorer = ", ".join(SCORER_NAMES[s].format(card.likelihood_norm) for s in card.scorers)
    else:
        scorer = mmbench.SCORER_NAME if kind == "mmbench" else vqa.SCORER_NAME
    info = {"card": card.name, "format": card.format, "data": str(path),
            "digest": "sha256:" + cards.file_digest(path), "prompt": prompt, "scorer": scorer,
            "likelihood_norm": card.likelihood_norm, "limit": card.limit}
    return Bench(card, kind, items, info)


def heldout_kind(card: BenchmarkConfig, jsonl: Path) -> str:
    """``benchmark.kind`` resolved (auto: look at the records); refuses MC on open data."""
    found = open_ended.records_kind(jsonl, card.limit)
    if card.kind == "auto":
        return found
    if card.kind == "multiple_choice" and found != card.kind:
        raise ConfigError(f"benchmark.kind=multiple_choice but {jsonl} holds records without "
                          "meta.answer_index / meta.choices; use benchmark.kind=open_ended "
                          "(or auto)")
    return card.kind

"""Score one loaded model on one prepared benchmark → (``metrics.json`` entries, rows).

Every prediction row has ``id``, ``prompt`` (the user turn given to the model), ``output``,
``parsed`` (or None), ``unparsed``, ``correct`` (bool, or the VQA score) and ``scorer``;
MMBench rows also ``index``. The likelihood scorer reports accuracy by the summed and by the
per-token-mean option log-likelihood; the card's ``likelihood_norm`` picks the answer.
"""

from __future__ import annotations

from typing import Any

from vlmtune.evaluation import open_ended
from vlmtune.evaluation.benchmarks import mmbench, vqa
from vlmtune.evaluation.benchmarks.prepare import Bench
from vlmtune.evaluation.multiple_choice import MCItem, MultipleChoiceScorer, summarize


def score(bench: Bench, loaded: Any, template: Any, system: str | None,
          label: str) -> tuple[dict[str, Any], list[dict]]:
    card = bench.card
    if bench.kind == "open_ended":
        return _open_ended(bench, loaded, template, system, label)
    scorer = MultipleChoiceScorer(loaded, template, system)
    if bench.kind == "mmbench":
        prompts = ["<image>\n" + mmbench.build_prompt(i) for i in bench.items]
        outputs = generate_texts(scorer, [(p, [i.extra["image_path"]]) for p, i in
                                          zip(prompts, bench.items, strict=True)],
                                 card.batch_size, card.max_new_tokens, label)
        rows = [{"scorer": "generate", **mmbench.prediction(i, p, o)}
                for i, p, o in zip(bench.items, prompts, outputs, strict=True)]
        return {"generate": mmbench.summarize(rows)}, rows
    if bench.kind == "vqa":
        prompts = [vqa.prompt_text(i) for i in bench.items]
        outputs = generate_texts(scorer, [(p, i.images) for p, i in
                                          zip(prompts, bench.items, strict=True)],
                                 card.batch_size, card.max_new_tokens, label)
        end = template.end.strip()
        outputs = [(o.split(end, 1)[0] if end else o).strip() for o in outputs]
        rows = [{"scorer": "generate", **vqa.prediction(i, p, o)}
                for i, p, o in zip(bench.items, prompts, outputs, strict=True)]
        return {"generate": vqa.summarize(rows)}, rows
    items: list[MCItem] = bench.items
    chance = sum(1 / len(i.choices) for i in items) / len(items) if items else 0.0
    by_scorer: dict[str, Any] = {}
    rows: list[dict] = []
    for name in card.scorers:
        if name == "likelihood":
            preds = [_normed(p, i, card.likelihood_norm) for p, i in
                     zip(scorer.likelihood(items, card.batch_size, label), items, strict=True)]
            entry = {**summarize(preds), "chance": chance,
                     "likelihood_norm": card.likelihood_norm,
                     "accuracy_sum": _mean(p["correct_sum"] for p in preds),
                     "accuracy_mean": _mean(p["correct_mean"] for p in preds)}
        else:
            preds = scorer.generate(items, card.batch_size, card.max_new_tokens, label)
            entry = {**summarize(preds), "chance": chance}
        by_scorer[name] = entry
        rows += [{"scorer": name, **_mc_fields(p, i, name)}
                 for p, i in zip(preds, items, strict=True)]
    return by_scorer, rows


def _open_ended(bench: Bench, loaded: Any, template: Any, system: str | None,
                label: str) -> tuple[dict[str, Any], list[dict]]:
    card, scorer = bench.card, open_ended.OpenEndedScorer(loaded, template, system)
    by_scorer: dict[str, Any] = {}
    rows: list[dict] = []
    for name in card.scorers:
        if name == "likelihood":
            preds = scorer.likelihood(bench.items, card.batch_size, label)
            by_scorer[name] = open_ended.summarize_likelihood(preds)
        else:
            preds = scorer.generate(bench.items, card.batch_size, card.max_new_tokens, label)
            by_scorer[name] = open_ended.summarize_generate(preds)
        rows += [{"scorer": name, **p} for p in preds]
    return by_scorer, rows


def generate_texts(scorer: MultipleChoiceScorer, prompts: list[tuple[str, list]],
                   batch_size: int, max_new_tokens: int, label: str) -> list[str]:
    """Greedy outputs of (user text, image paths) pairs via the batched MC generation."""
    items = [MCItem(id=str(n), question_type="all", question=text, images=list(images),
                    choices=["-"], letters="A", answer=0, lang="en")
             for n, (text, images) in enumerate(prompts)]
    return [p["output"] for p in scorer.generate(items, batch_size, max_new_tokens, label)]


def _normed(pred: dict, item: MCItem, norm: str) -> dict:
    """A likelihood row with both picks, ``pred`` / ``correct`` by the card's norm."""
    best_sum = max(range(len(pred["scores"])), key=pred["scores"].__getitem__)
    best_mean = max(range(len(pred["mean_scores"])), key=pred["mean_scores"].__getitem__)
    best = best_sum if norm == "sum" else best_mean
    return {**pred, "pred": item.letters[best], "correct": best == item.answer,
            "pred_sum": item.letters[best_sum], "pred_mean": item.letters[best_mean],
            "correct_sum": best_sum == item.answer, "correct_mean": best_mean == item.answer}


def _mc_fields(pred: dict, item: MCItem, scorer: str) -> dict:
    prompt = item.question + (item.assistant_prefix or "")
    output = pred.get("output")
    if scorer == "likelihood" and pred["pred"] is not None:
        output = item.reply(item.letters.index(pred["pred"]))
    return {**pred, "prompt": prompt, "output": output, "parsed": pred["pred"],
            "unparsed": pred["pred"] is None}


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0

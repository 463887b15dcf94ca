"""Stage 4: base and tuned model on the held-out benchmark → predictions, metrics, report.

Writes ``eval/<base|tuned>/<benchmark>/{predictions.jsonl,metrics.json}`` and ``report.md``;
logs ``eval/<benchmark>/…`` (tuned) and ``eval_base/<benchmark>/…`` (base): ``accuracy`` for a
multiple-choice benchmark, ``loss``, ``perplexity``, ``exact_match`` and ``token_f1`` for an
open-ended one (``benchmark.kind``; auto: multiple choice when every record is).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlmtune.config.schema import resolve_device
from vlmtune.data.templates import get_template
from vlmtune.errors import ConfigError
from vlmtune.evaluation import open_ended
from vlmtune.evaluation.multiple_choice import MultipleChoiceScorer, load_items, summarize
from vlmtune.evaluation.plots import publish_plots
from vlmtune.evaluation.report import render_report, scorer_entries
from vlmtune.models.loading import ensure_model_dir, load_model
from vlmtune.models.methods import load_adapter
from vlmtune.models.plora import is_plora_adapter
from vlmtune.pipelines.context import RunContext
from vlmtune.pipelines.state import write_atomic

log = logging.getLogger(__name__)

PREFIX = {"base": "eval_base", "tuned": "eval"}
SAMPLES = 3  # sample generations shown in report.md
# metrics logged per benchmark for each kind: (scorer, metric)
LOGGED = {"multiple_choice": (("likelihood", "accuracy"), ("generate", "accuracy")),
          "open_ended": (("likelihood", "loss"), ("likelihood", "perplexity"),
                         ("generate", "exact_match"), ("generate", "token_f1"))}


def run(ctx: RunContext) -> None:
    recipe, bench = ctx.recipe, ctx.recipe.benchmark
    manifest = ctx.manifest()
    jsonl = ctx.data_dir / f"{bench.split}.jsonl"
    kind = benchmark_kind(bench.kind, jsonl, bench.limit)
    image_root = Path(manifest["image_root"])
    if kind == "multiple_choice":
        items = load_items(jsonl, image_root, bench.limit)
    else:
        items = open_ended.load_open_items(jsonl, image_root, bench.limit)
    models: dict[str, tuple[Path, Path | None]] = {"base": (ensure_model_dir(recipe.model), None)}
    if "train" in recipe.pipeline.stages:
        models["tuned"] = tuned_model(ctx)
    metrics: dict[str, dict[str, Any]] = {}
    for label, (model_dir, adapter) in models.items():
        metrics[label] = {bench.name: evaluate_model(ctx, label, model_dir, adapter, items,
                                                     kind)}
    samples = {bench.name: sample_generations(ctx)} if kind == "open_ended" else {}
    write_atomic(ctx.run_dir / "report.md", render_report(ctx.run_key, metrics, samples))
    publish_plots(ctx.run_dir, ctx.tracker, {label: list(m) for label, m in metrics.items()})
    ctx.tracker.log_artifact(ctx.run_dir / "report.md")
    ctx.tracker.log_artifact(ctx.run_dir / "eval", "eval")


def benchmark_kind(kind: str, jsonl: Path, limit: int | None) -> str:
    """``benchmark.kind`` resolved (auto: look at the records); refuses MC on open data."""
    found = open_ended.records_kind(jsonl, limit)
    if kind == "auto":
        return found
    if kind == "multiple_choice" and found != kind:
        raise ConfigError(f"benchmark.kind=multiple_choice but {jsonl} holds records without "
                          "meta.answer_index / meta.choices; use benchmark.kind=open_ended "
                          "(or auto)")
    return kind


def tuned_model(ctx: RunContext) -> tuple[Path, Path | None]:
    """``merged/``, or base + ``adapter/`` for an adapter that cannot be merged (PLoRA)."""
    adapter = ctx.run_dir / "adapter"
    if is_plora_adapter(adapter):
        return ensure_model_dir(ctx.recipe.model), adapter
    return ctx.require("merged", "convert"), None


def evaluate_model(ctx: RunContext, label: str, model_dir: Path, adapter: Path | None,
                   items, kind: str) -> dict[str, Any]:
    """Score one model with every scorer of the benchmark; reuse a finished result."""
    recipe, bench = ctx.recipe, ctx.recipe.benchmark
    out_dir = ctx.run_dir / "eval" / label / bench.name
    metrics_path = out_dir / "metrics.json"
    if metrics_path.exists():
        log.info("evaluate: %s already scored (%s)", label, metrics_path)
        result = json.loads(metrics_path.read_text())
        result.setdefault("kind", "multiple_choice")  # written before open-ended evaluation
        result.setdefault("primary", primary_metric(result["kind"], bench.scorers,
                                                    scorer_entries(result)))
    else:
        loaded = load_model(model_dir, recipe.model, device=resolve_device(recipe.device))
        if adapter is not None:
            loaded.model = load_adapter(loaded.model, adapter)
        template = get_template(recipe.model.chat_template)
        by_scorer, rows = {}, []
        if kind == "multiple_choice":
            scorer = MultipleChoiceScorer(loaded, template, recipe.model.system_prompt)
            chance = sum(1 / len(i.choices) for i in items) / len(items) if items else 0.0
        else:
            scorer = open_ended.OpenEndedScorer(loaded, template, recipe.model.system_prompt)
        for name in bench.scorers:
            if name == "likelihood":
                preds = scorer.likelihood(items, bench.batch_size, label)
            else:
                preds = scorer.generate(items, bench.batch_size, bench.max_new_tokens, label)
            if kind == "multiple_choice":
                by_scorer[name] = {**summarize(preds), "chance": chance}
            elif name == "likelihood":
                by_scorer[name] = open_ended.summarize_likelihood(preds)
            else:
                by_scorer[name] = open_ended.summarize_generate(preds)
            rows += [{"scorer": name, **p} for p in preds]
        result = {"kind": kind, "primary": primary_metric(kind, bench.scorers, by_scorer),
                  **by_scorer}
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "predictions.jsonl",
                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_atomic(metrics_path, json.dumps(result, indent=2) + "\n")
    ctx.tracker.log_metrics(logged_metrics(f"{PREFIX[label]}/{bench.name}", result))
    primary = result["primary"]
    log.info("evaluate: %s %s %s %.3f (n=%d)", label, bench.name, primary["name"],
             primary["value"], primary["n"])
    return result


def primary_metric(kind: str, scorers: list[str], by_scorer: dict[str, dict]) -> dict:
    """The benchmark's headline number: the first scorer's accuracy (multiple choice); else
    generation token-F1 if generated, else perplexity."""
    if kind == "multiple_choice":
        scorer, metric = scorers[0], "accuracy"
    elif "generate" in by_scorer:
        scorer, metric = "generate", "token_f1"
    else:
        scorer, metric = "likelihood", "perplexity"
    entry = by_scorer[scorer]
    return {"name": f"{scorer}/{metric}", "value": float(entry[metric]), "n": int(entry["n"])}


def logged_metrics(prefix: str, result: dict) -> dict[str, float]:
    """MLflow metrics of one model on one benchmark.

    Multiple choice: ``<prefix>/accuracy`` = the primary scorer's accuracy, and per scorer
    ``<prefix>/<scorer>/{accuracy,unparsed}``; open-ended: ``<prefix>/{loss,perplexity,
    exact_match,token_f1}`` and ``<prefix>/generate/unparsed``; always ``<prefix>/n``.
    """
    entries = scorer_entries(result)
    logged: dict[str, float] = {f"{prefix}/n": result["primary"]["n"]}
    if result.get("kind", "multiple_choice") == "multiple_choice":
        logged[f"{prefix}/accuracy"] = result["primary"]["value"]
        for name, m in entries.items():
            logged[f"{prefix}/{name}/accuracy"] = m["accuracy"]
            logged[f"{prefix}/{name}/unparsed"] = m["unparsed"]
        return logged
    for scorer, metric in LOGGED["open_ended"]:
        if scorer in entries:
            logged[f"{prefix}/{metric}"] = entries[scorer][metric]
    if "generate" in entries:
        logged[f"{prefix}/generate/unparsed"] = entries["generate"]["unparsed"]
    return logged


def sample_generations(ctx: RunContext) -> list[dict]:
    """The first few held-out generations: question, reference, base and tuned outputs."""
    bench = ctx.recipe.benchmark
    outputs: dict[str, dict[str, dict]] = {}
    for label in ("base", "tuned"):
        path = ctx.run_dir / "eval" / label / bench.name / "predictions.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            outputs[label] = {r["id"]: r for r in rows if r.get("scorer") == "generate"}
    first = outputs.get("base") or outputs.get("tuned") or {}
    return [{"id": rid, "question": row["question"], "reference": row["reference"],
             **{label: outs[rid]["output"] for label, outs in outputs.items() if rid in outs}}
            for rid, row in list(first.items())[:SAMPLES]]

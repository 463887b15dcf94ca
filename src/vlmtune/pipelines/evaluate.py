"""Stage 4: base and tuned model on every benchmark of ``benchmarks`` → predictions, metrics.

Writes ``eval/<base|tuned>/<benchmark>/{predictions.jsonl,metrics.json}`` and ``report.md``;
logs ``eval/<benchmark>/…`` (tuned) and ``eval_base/<benchmark>/…`` (base). ``heldout`` is the
``benchmark`` card on the run's held-out split: ``accuracy`` for multiple choice, ``loss``,
``perplexity``, ``exact_match`` and ``token_f1`` for open-ended data (``benchmark.kind``; auto:
multiple choice when every record is). Other cards (``evaluation/``): FoodieQA files
(``accuracy``), MMBench (``circular_accuracy``, ``vanilla_accuracy``), VQA (``vqa_accuracy``,
``exact_match``, ``anls``). Each ``metrics.json`` records the data digest, prompt and scorer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlmtune.config.schema import resolve_device
from vlmtune.data.templates import get_template
from vlmtune.evaluation.benchmarks.cards import load_cards
from vlmtune.evaluation.benchmarks.prepare import Bench, prepare
from vlmtune.evaluation.benchmarks.score import score
from vlmtune.evaluation.plots import publish_plots
from vlmtune.evaluation.report import render_report, scorer_entries
from vlmtune.models.loading import ensure_model_dir, load_model
from vlmtune.models.methods import load_adapter
from vlmtune.models.plora import is_plora_adapter
from vlmtune.pipelines.context import RunContext
from vlmtune.pipelines.state import write_atomic

log = logging.getLogger(__name__)

PREFIX = {"base": "eval_base", "tuned": "eval", "champion": "eval_champion"}
SAMPLES = 3  # sample generations shown in report.md
# metrics logged per benchmark for each kind: (scorer, metric)
LOGGED = {"open_ended": (("likelihood", "loss"), ("likelihood", "perplexity"),
                         ("generate", "exact_match"), ("generate", "token_f1")),
          "mmbench": (("generate", "circular_accuracy"), ("generate", "vanilla_accuracy"),
                      ("generate", "unparsed")),
          "vqa": (("generate", "vqa_accuracy"), ("generate", "exact_match"),
                  ("generate", "anls"), ("generate", "unparsed"))}
PRIMARY = {"mmbench": "circular_accuracy", "vqa": "vqa_accuracy"}


def run(ctx: RunContext) -> None:
    recipe = ctx.recipe
    benches = prepare_benches(ctx)
    models: dict[str, tuple[Path, Path | None]] = {"base": (ensure_model_dir(recipe.model), None)}
    if "train" in recipe.pipeline.stages:
        models["tuned"] = tuned_model(ctx)
    metrics = {label: evaluate_model(ctx, label, model_dir, adapter, benches)
               for label, (model_dir, adapter) in models.items()}
    samples = {b.name: sample_generations(ctx, b.name) for b in benches
               if b.kind == "open_ended"}
    write_atomic(ctx.run_dir / "report.md", render_report(ctx.run_key, metrics, samples))
    publish_plots(ctx.run_dir, ctx.tracker, {label: list(m) for label, m in metrics.items()})
    ctx.tracker.log_artifact(ctx.run_dir / "report.md")
    ctx.tracker.log_artifact(ctx.run_dir / "eval", "eval")


def prepare_benches(ctx: RunContext) -> list[Bench]:
    """Every benchmark of the recipe, its items ready to score."""
    image_root = Path(ctx.manifest()["image_root"])
    return [prepare(card, data_dir=ctx.data_dir, image_root=image_root,
                    work_dir=ctx.run_dir / "benchmarks",
                    chat_template=ctx.recipe.model.chat_template)
            for card in load_cards(ctx.recipe).values()]


def tuned_model(ctx: RunContext, run_dir: Path | None = None) -> tuple[Path, Path | None]:
    """``merged/``, or base + ``adapter/`` for an adapter that cannot be merged (PLoRA), of
    this run (or of another run directory of the same recipe, e.g. the champion's)."""
    run_dir = ctx.run_dir if run_dir is None else run_dir
    adapter = run_dir / "adapter"
    if is_plora_adapter(adapter):
        return ensure_model_dir(ctx.recipe.model), adapter
    if run_dir != ctx.run_dir:
        return run_dir / "merged", None
    return ctx.require("merged", "convert"), None


def evaluate_model(ctx: RunContext, label: str, model_dir: Path, adapter: Path | None,
                   benches: list[Bench]) -> dict[str, dict[str, Any]]:
    """Score one model on every benchmark (loaded once); reuse finished results."""
    recipe, loaded, results = ctx.recipe, None, {}
    for bench in benches:
        out_dir = ctx.run_dir / "eval" / label / bench.name
        metrics_path = out_dir / "metrics.json"
        if metrics_path.exists():
            log.info("evaluate: %s already scored (%s)", label, metrics_path)
            result = json.loads(metrics_path.read_text())
            result.setdefault("kind", "multiple_choice")  # written before open-ended evaluation
            result.setdefault("primary", primary_metric(result["kind"], bench.card.scorers,
                                                        scorer_entries(result)))
        else:
            if loaded is None:
                loaded = load_model(model_dir, recipe.model, device=resolve_device(recipe.device))
                if adapter is not None:
                    loaded.model = load_adapter(loaded.model, adapter)
            template = get_template(recipe.model.chat_template)
            by_scorer, rows = score(bench, loaded, template, recipe.model.system_prompt, label)
            result = {"kind": bench.kind,
                      "primary": primary_metric(bench.kind, bench.card.scorers, by_scorer),
                      "benchmark": bench.info, **by_scorer}
            out_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(out_dir / "predictions.jsonl",
                         "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                 for r in rows))
            write_atomic(metrics_path, json.dumps(result, indent=2) + "\n")
        ctx.tracker.log_metrics(logged_metrics(f"{PREFIX[label]}/{bench.name}", result))
        primary = result["primary"]
        log.info("evaluate: %s %s %s %.3f (n=%d)", label, bench.name, primary["name"],
                 primary["value"], primary["n"])
        results[bench.name] = result
    return results


def primary_metric(kind: str, scorers: list[str], by_scorer: dict[str, dict]) -> dict:
    """The benchmark's headline number: the first scorer's accuracy (multiple choice); MMBench
    circular accuracy; VQA accuracy; else generation token-F1 if generated, else perplexity."""
    if kind == "multiple_choice":
        scorer, metric = scorers[0], "accuracy"
    elif kind in PRIMARY:
        scorer, metric = "generate", PRIMARY[kind]
    elif "generate" in by_scorer:
        scorer, metric = "generate", "token_f1"
    else:
        scorer, metric = "likelihood", "perplexity"
    entry = by_scorer[scorer]
    return {"name": f"{scorer}/{metric}", "value": float(entry[metric]), "n": int(entry["n"])}


def logged_metrics(prefix: str, result: dict) -> dict[str, float]:
    """MLflow metrics of one model on one benchmark.

    Multiple choice: ``<prefix>/accuracy`` = the primary scorer's accuracy, and per scorer
    ``<prefix>/<scorer>/{accuracy,unparsed}`` (likelihood also ``accuracy_sum`` and
    ``accuracy_mean``); open-ended: ``<prefix>/{loss,perplexity,exact_match,token_f1}`` and
    ``<prefix>/generate/unparsed``; MMBench ``<prefix>/{circular,vanilla}_accuracy``; VQA
    ``<prefix>/{vqa_accuracy,exact_match,anls}``; always ``<prefix>/n``.
    """
    entries = scorer_entries(result)
    kind = result.get("kind", "multiple_choice")
    logged: dict[str, float] = {f"{prefix}/n": result["primary"]["n"]}
    if kind == "multiple_choice":
        logged[f"{prefix}/accuracy"] = result["primary"]["value"]
        for name, m in entries.items():
            for metric in ("accuracy", "unparsed", "accuracy_sum", "accuracy_mean"):
                if metric in m:
                    logged[f"{prefix}/{name}/{metric}"] = m[metric]
        return logged
    for scorer, metric in LOGGED.get(kind, ()):
        if scorer in entries:
            logged[f"{prefix}/{metric}"] = entries[scorer][metric]
    if kind == "open_ended" and "generate" in entries:
        logged[f"{prefix}/generate/unparsed"] = entries["generate"]["unparsed"]
    return logged


def sample_generations(ctx: RunContext, bench: str) -> list[dict]:
    """The first few generations of a benchmark: question, reference, base and tuned outputs."""
    outputs: dict[str, dict[str, dict]] = {}
    for label in ("base", "tuned"):
        path = ctx.run_dir / "eval" / label / bench / "predictions.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            outputs[label] = {r["id"]: r for r in rows if r.get("scorer") == "generate"}
    first = outputs.get("base") or outputs.get("tuned") or {}
    return [{"id": rid, "question": row["question"], "reference": row["reference"],
             **{label: outs[rid]["output"] for label, outs in outputs.items() if rid in outs}}
            for rid, row in list(first.items())[:SAMPLES]]

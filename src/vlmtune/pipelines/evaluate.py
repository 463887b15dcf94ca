"""Stage 4: base and tuned model on the held-out benchmark → predictions, metrics, report.

Writes ``eval/<base|tuned>/<benchmark>/{predictions.jsonl,metrics.json}`` and ``report.md``;
logs ``eval/<benchmark>/accuracy`` (tuned) and ``eval_base/<benchmark>/accuracy`` (base).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlmtune.data.templates import get_template
from vlmtune.evaluation.multiple_choice import MultipleChoiceScorer, load_items, summarize
from vlmtune.evaluation.report import render_report
from vlmtune.models.loading import ensure_model_dir, load_model
from vlmtune.models.methods import load_adapter
from vlmtune.models.plora import is_plora_adapter
from vlmtune.pipelines.context import RunContext
from vlmtune.pipelines.state import write_atomic

log = logging.getLogger(__name__)

PREFIX = {"base": "eval_base", "tuned": "eval"}


def run(ctx: RunContext) -> None:
    recipe, bench = ctx.recipe, ctx.recipe.benchmark
    manifest = ctx.manifest()
    items = load_items(ctx.data_dir / f"{bench.split}.jsonl", Path(manifest["image_root"]),
                       bench.limit)
    models: dict[str, tuple[Path, Path | None]] = {"base": (ensure_model_dir(recipe.model), None)}
    if "train" in recipe.pipeline.stages:
        models["tuned"] = tuned_model(ctx)
    metrics: dict[str, dict[str, Any]] = {}
    for label, (model_dir, adapter) in models.items():
        metrics[label] = {bench.name: evaluate_model(ctx, label, model_dir, adapter, items)}
    write_atomic(ctx.run_dir / "report.md", render_report(ctx.run_key, metrics))
    ctx.tracker.log_artifact(ctx.run_dir / "report.md")
    ctx.tracker.log_artifact(ctx.run_dir / "eval", "eval")


def tuned_model(ctx: RunContext) -> tuple[Path, Path | None]:
    """``merged/``, or base + ``adapter/`` for an adapter that cannot be merged (PLoRA)."""
    adapter = ctx.run_dir / "adapter"
    if is_plora_adapter(adapter):
        return ensure_model_dir(ctx.recipe.model), adapter
    return ctx.require("merged", "convert"), None


def evaluate_model(ctx: RunContext, label: str, model_dir: Path, adapter: Path | None,
                   items) -> dict[str, Any]:
    """Score one model with every scorer of the benchmark; reuse a finished result."""
    recipe, bench = ctx.recipe, ctx.recipe.benchmark
    out_dir = ctx.run_dir / "eval" / label / bench.name
    metrics_path = out_dir / "metrics.json"
    if metrics_path.exists():
        log.info("evaluate: %s already scored (%s)", label, metrics_path)
        by_scorer = json.loads(metrics_path.read_text())
    else:
        loaded = load_model(model_dir, recipe.model)
        if adapter is not None:
            loaded.model = load_adapter(loaded.model, adapter)
        scorer = MultipleChoiceScorer(loaded, get_template(recipe.model.chat_template),
                                      recipe.model.system_prompt)
        by_scorer, rows = {}, []
        for name in bench.scorers:
            if name == "likelihood":
                preds = scorer.likelihood(items, bench.batch_size, label)
            else:
                preds = scorer.generate(items, bench.batch_size, bench.max_new_tokens, label)
            by_scorer[name] = summarize(preds)
            rows += [{"scorer": name, **p} for p in preds]
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "predictions.jsonl",
                     "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        write_atomic(metrics_path, json.dumps(by_scorer, indent=2) + "\n")
    prefix = f"{PREFIX[label]}/{bench.name}"
    primary = by_scorer[bench.scorers[0]]
    logged = {f"{prefix}/accuracy": primary["accuracy"]}
    for name, m in by_scorer.items():
        logged[f"{prefix}/{name}/accuracy"] = m["accuracy"]
        logged[f"{prefix}/{name}/unparsed"] = m["unparsed"]
    ctx.tracker.log_metrics(logged)
    log.info("evaluate: %s %s accuracy %.3f", label, bench.name, primary["accuracy"])
    return by_scorer

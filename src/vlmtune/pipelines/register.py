"""Stage 5: register the tuned model in MLflow and gate its promotion to ``champion``.

The new version (``merged/``, or base + ``adapter/`` for PLoRA, as a pyfunc model) gets the
alias ``challenger``; the gate (``registry.gate``) compares its score on the gate's benchmark
with the champion's on the same benchmark and data digest, and on a win moves ``champion`` to
it and the old champion to ``previous``. Writes ``registry.json`` (read by ``vlmtune
retrain``); a re-run never registers a second version of the same run.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlmtune.config import RecipeConfig
from vlmtune.errors import ConfigError, StageError
from vlmtune.pipelines.context import RunContext
from vlmtune.pipelines.state import write_atomic

log = logging.getLogger(__name__)

REGISTRY_FILE = "registry.json"
TAG = "vlmtune.gate."
LOWER_IS_BETTER = ("loss", "perplexity")


@dataclass
class Score:
    benchmark: str
    metric: str
    value: float
    digest: str


def run(ctx: RunContext) -> None:
    from vlmtune.tracking.registry import Registry

    recipe = ctx.recipe
    if not recipe.tracking.enabled:
        log.info("register: tracking is disabled (tracking=disabled): nothing registered")
        return
    name = model_name(recipe)
    score = challenger_score(ctx)
    registry = Registry(recipe.tracking.uri)
    run_id = ctx.state.mlflow_run_id
    if not run_id:
        raise StageError("register: the run has no MLflow run id (was tracking enabled?)")
    version = registry.version_of_run(name, run_id)
    if version is not None and version.tags.get(TAG + "decision"):
        log.info("register: %s version %s is run %s's (already gated: %s)", name,
                 version.version, run_id, version.tags[TAG + "decision"])
        decision = json.loads((ctx.run_dir / REGISTRY_FILE).read_text(encoding="utf-8")) if (
            ctx.run_dir / REGISTRY_FILE).exists() else None
        if decision and decision.get("version") == version.version:
            return
    if version is None:
        version = registry.register(name, run_id, *model_artifacts(ctx))
    registry.set_alias(name, "challenger", version.version)
    champion = registry.by_alias(name, "champion")
    if champion is not None and champion.version == version.version:
        champion = None  # a re-run after promotion: compare with nothing, stays promoted
    champion_value = comparable_value(champion, score)
    why_incomparable = incomparable_reason(champion, score)
    rescored = False
    if champion is not None and only_data_differs(champion, score):
        champion_value = rescore_champion(ctx, champion, score)
        rescored = champion_value is not None
        why_incomparable = None if rescored else why_incomparable
    verdict, reason = gate_decision(score.value, champion_value, recipe.registry.gate.min_delta,
                                    metric=score.metric,
                                    champion_version=champion.version if champion else None,
                                    why_incomparable=why_incomparable)
    if rescored:
        reason += " (the champion re-scored on this run's data)"
    registry.set_tags(name, version.version, {
        TAG + "decision": verdict, TAG + "challenger": score.value,
        TAG + "champion": "none" if champion_value is None else champion_value,
        TAG + "benchmark": score.benchmark, TAG + "metric": score.metric,
        TAG + "digest": score.digest, TAG + "reason": reason})
    if verdict == "promoted":
        if champion is not None:
            registry.set_alias(name, "previous", champion.version)
        registry.set_alias(name, "champion", version.version)
    record = {"model": name, "version": version.version, "decision": verdict, "reason": reason,
              "challenger": score.value, "champion": champion_value,
              "champion_version": champion.version if champion else None,
              "benchmark": score.benchmark, "metric": score.metric}
    write_atomic(ctx.run_dir / REGISTRY_FILE, json.dumps(record, indent=2) + "\n")
    ctx.tracker.set_tags({"vlmtune.registry.version": version.version,
                          "vlmtune.registry.decision": verdict})
    log.info("register: %s version %s %s: %s", name, version.version,
             verdict.replace("_", " "), reason)


def model_name(recipe: RecipeConfig) -> str:
    return recipe.registry.model_name or f"vlmtune-{recipe.experiment_name}"


def gate_decision(challenger: float, champion: float | None, min_delta: float = 0.0, *,
                  metric: str = "accuracy", champion_version: str | None = None,
                  why_incomparable: str | None = None) -> tuple[str, str]:
    """``("promoted" | "not_promoted", reason)``: promoted when there is no champion, or when
    the challenger beats it by more than ``min_delta`` (lower is better for loss/perplexity).
    ``why_incomparable``: the champion was scored on another benchmark, metric or data."""
    who = f"champion v{champion_version}" if champion_version else "the champion"
    if why_incomparable:
        return "not_promoted", (f"{who} is not comparable ({why_incomparable}); promote by "
                                "hand with vlmtune promote")
    if champion is None:
        return "promoted", f"no champion yet: first version, {metric}={challenger:.4f}"
    lower = metric.rsplit("/", 1)[-1] in LOWER_IS_BETTER
    gain = (champion - challenger) if lower else (challenger - champion)
    compare = (f"{metric} {challenger:.4f} vs {who}'s {champion:.4f} "
               f"({'lower' if lower else 'higher'} is better, min_delta={min_delta:g})")
    if gain > min_delta and not math.isnan(gain):
        return "promoted", f"beats {compare}"
    return "not_promoted", f"does not beat {compare}"


def challenger_score(ctx: RunContext) -> Score:
    """The tuned model's gate metric on the gate's benchmark, from ``eval/tuned/*/``."""
    gate = ctx.recipe.registry.gate
    tuned = ctx.run_dir / "eval" / "tuned"
    found = sorted(p.name for p in tuned.glob("*") if (p / "metrics.json").is_file())
    if not found:
        raise StageError(f"{tuned} holds no metrics.json: run the evaluate stage first "
                         "(the register stage gates on the tuned model's scores)")
    bench = gate.benchmark or default_benchmark(ctx.recipe, found)
    if bench not in found:
        raise ConfigError(f"registry.gate.benchmark={bench!r} was not evaluated in this run; "
                          f"choose one of: {', '.join(found)}")
    metrics = json.loads((tuned / bench / "metrics.json").read_text(encoding="utf-8"))
    metric, value = metric_value(metrics, gate.metric, bench)
    digest = str(metrics.get("data_digest") or ctx.data_fingerprint)
    return Score(bench, metric, value, digest)


def default_benchmark(recipe: RecipeConfig, found: list[str]) -> str:
    """The first benchmark of the recipe that was evaluated (``heldout`` is its card)."""
    for name in getattr(recipe, "benchmarks", None) or ["heldout"]:
        name = recipe.benchmark.name if name == "heldout" and name not in found else name
        if name in found:
            return name
    return recipe.benchmark.name if recipe.benchmark.name in found else found[0]


def metric_value(metrics: dict[str, Any], metric: str | None, bench: str) -> tuple[str, float]:
    """``metric`` in a benchmark's metrics.json: None → its primary; ``scorer/name``; or a
    bare name (top level, else the primary scorer's)."""
    primary = metrics.get("primary") or {}
    if metric is None:
        if "value" not in primary:
            raise ConfigError(f"eval/tuned/{bench}/metrics.json has no primary metric; set "
                              "registry.gate.metric")
        return str(primary["name"]), float(primary["value"])
    if "/" in metric:
        scorer, key = metric.split("/", 1)
        value = (metrics.get(scorer) or {}).get(key) if isinstance(metrics.get(scorer),
                                                                   dict) else None
    else:
        value = metrics.get(metric)
        if not isinstance(value, (int, float)):
            scorer = str(primary.get("name", "")).split("/")[0]
            value = (metrics.get(scorer) or {}).get(metric) if scorer else None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"registry.gate.metric={metric!r} is not in eval/tuned/{bench}/"
                          "metrics.json (e.g. accuracy, likelihood/accuracy)")
    return metric, float(value)


def comparable_value(champion, score: Score) -> float | None:
    if champion is None or incomparable_reason(champion, score):
        return None
    return float(champion.tags[TAG + "challenger"])


def incomparable_reason(champion, score: Score) -> str | None:
    if champion is None:
        return None
    tags = champion.tags
    if TAG + "challenger" not in tags:
        return "it carries no gate score"
    for key, mine in (("benchmark", score.benchmark), ("metric", score.metric),
                      ("digest", score.digest)):
        theirs = tags.get(TAG + key)
        if theirs != mine:
            return f"{key} {theirs} vs {mine}"
    return None


def only_data_differs(champion, score: Score) -> bool:
    """The champion was gated on the same benchmark and metric but on other data."""
    tags = champion.tags
    same = (tags.get(TAG + "benchmark"), tags.get(TAG + "metric")) == (score.benchmark,
                                                                       score.metric)
    return TAG + "challenger" in tags and same and tags.get(TAG + "digest") != score.digest


def rescore_champion(ctx: RunContext, champion, score: Score) -> float | None:
    """The champion's gate metric on this run's data (like with like): its run's tuned model
    scored here into ``eval/champion/<benchmark>/``; None when its run directory is gone."""
    import shutil

    from vlmtune.pipelines.evaluate import evaluate_model, prepare_benches, tuned_model
    from vlmtune.tracking.lookup import run_dir_of

    try:
        champion_dir = run_dir_of(ctx.recipe.tracking.uri, champion.run_id)
    except ConfigError as err:
        log.warning("register: cannot re-score champion v%s: %s", champion.version, err)
        return None
    model_dir, adapter = tuned_model(ctx, champion_dir)
    if not (adapter or model_dir).exists():
        log.warning("register: cannot re-score champion v%s: %s is gone", champion.version,
                    adapter or model_dir)
        return None
    benches = [b for b in prepare_benches(ctx) if b.name == score.benchmark]
    if not benches:
        return None
    log.info("register: champion v%s was scored on other data; re-scoring it (%s) on %s",
             champion.version, champion_dir, score.benchmark)
    shutil.rmtree(ctx.run_dir / "eval" / "champion", ignore_errors=True)
    result = evaluate_model(ctx, "champion", model_dir, adapter, benches)[score.benchmark]
    return metric_value(result, ctx.recipe.registry.gate.metric, score.benchmark)[1]


def model_artifacts(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """What the pyfunc needs: ``model_dir`` (+ ``adapter_dir`` for PLoRA) and the model
    section of the recipe (family, template, system prompt …)."""
    from vlmtune.pipelines.evaluate import tuned_model

    model_dir, adapter = tuned_model(ctx)
    artifacts = {"model_dir": Path(model_dir)}
    if adapter is not None:
        artifacts["adapter_dir"] = Path(adapter)
    config = asdict(ctx.recipe.model)
    config.pop("path", None)
    return artifacts, config

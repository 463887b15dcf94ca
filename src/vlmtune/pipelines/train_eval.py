"""The train stage's evaluation callable (``train.eval_every``): accuracy of the model being
trained on a fixed subset of the first benchmark, scored as the evaluate stage scores it."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vlmtune.data.templates import get_template
from vlmtune.errors import ConfigError
from vlmtune.evaluation import open_ended
from vlmtune.evaluation.multiple_choice import MultipleChoiceScorer, load_items, summarize
from vlmtune.models.loading import LoadedModel
from vlmtune.pipelines.context import RunContext
from vlmtune.training.eval_during import EvalEvery, load_best
from vlmtune.training.hooks import StepCallback

log = logging.getLogger(__name__)

HELDOUT = "heldout"
PROGRESS_ENV = "VLMTUNE_PROGRESS"


def first_benchmark(ctx: RunContext) -> tuple[str, Path]:
    """(logged name, JSONL) of the first of ``benchmarks``; only the run's held-out split
    (``heldout``, logged under the ``benchmark`` card's name) is scored during training."""
    names = list(getattr(ctx.recipe, "benchmarks", None) or [HELDOUT])
    if names[0] != HELDOUT:
        raise ConfigError(f"train.eval_every scores the first benchmark during training, and "
                          f"only {HELDOUT!r} is supported there (benchmarks[0]={names[0]!r}); "
                          f"put {HELDOUT} first or unset train.eval_every")
    return ctx.recipe.benchmark.name, ctx.data_dir / f"{ctx.recipe.benchmark.split}.jsonl"


def build_evaluate(ctx: RunContext, loaded: LoadedModel,
                   model: Any) -> tuple[str, Callable[[], float]]:
    """(metric name ``eval/<benchmark>/accuracy``, a callable scoring ``model`` now).

    The items are the benchmark's first ``train.eval_items`` records; the first of
    ``benchmark.scorers`` scores them at ``benchmark.batch_size``, as in the evaluate stage.
    """
    recipe, bench = ctx.recipe, ctx.recipe.benchmark
    name, jsonl = first_benchmark(ctx)
    limit = min(recipe.train.eval_items, bench.limit or recipe.train.eval_items)
    if open_ended.records_kind(jsonl, limit) != "multiple_choice":
        raise ConfigError(f"train.eval_every logs accuracy, which needs a multiple-choice "
                          f"benchmark; {jsonl} holds open-ended records")
    items = load_items(jsonl, Path(ctx.manifest()["image_root"]), limit)
    scorer = MultipleChoiceScorer(dataclasses.replace(loaded, model=model),
                                  get_template(recipe.model.chat_template),
                                  recipe.model.system_prompt)
    method = bench.scorers[0]

    def evaluate() -> float:
        with _no_progress():  # the training bar is live: rich allows one display at a time
            if method == "likelihood":
                preds = scorer.likelihood(items, bench.batch_size, "train")
            else:
                preds = scorer.generate(items, bench.batch_size, bench.max_new_tokens, "train")
        return float(summarize(preds)["accuracy"])

    return f"eval/{name}/accuracy", evaluate


@contextmanager
def _no_progress() -> Iterator[None]:
    old = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = old


def with_evaluation(ctx: RunContext, loaded: LoadedModel, model: Any,
                    on_step: StepCallback) -> StepCallback:
    """``on_step`` with ``train.eval_every`` evaluation (and ``train.keep_best``) added."""
    cfg = ctx.recipe.train
    name, evaluate = build_evaluate(ctx, loaded, model)
    return EvalEvery(on_step, evaluate, every=cfg.eval_every, name=name, model=model,
                     best_root=ctx.run_dir / "checkpoints" if cfg.keep_best else None)


def take_best(ctx: RunContext, model: Any) -> None:
    """``train.keep_best``: load the best checkpoint's weights into ``model`` (the stage's
    output is then written from it)."""
    if ctx.recipe.train.keep_best:
        meta = load_best(model, ctx.run_dir / "checkpoints")
        if meta is None:
            log.warning("train.keep_best: no checkpoints/best/ was written; keeping the last "
                        "weights")
        else:
            log.info("train: keeping the best checkpoint, iteration %d (%s %.4f)",
                     meta["iteration"], meta["metric"], meta["value"])

"""Stage 2: fine-tune the model on ``data/train.jsonl``.

Writes ``adapter/`` (LoRA, QLoRA, PLoRA) or ``trained/`` (the whole model: full fine-tuning, or
a freeze preset without adapters such as ``projector_only``); checkpoints go to
``checkpoints/iter_<N>/`` and re-running resumes from the newest completed one.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from vlmtune.config.schema import resolve_device
from vlmtune.data.collate import Collator, ConversationDataset
from vlmtune.data.templates import get_template
from vlmtune.errors import StageError
from vlmtune.evaluation.curves import StepLog
from vlmtune.models.loading import DTYPES, ensure_model_dir, load_model
from vlmtune.models.methods import apply_method, save_trained, saves_adapter
from vlmtune.pipelines.context import RunContext
from vlmtune.pipelines.preflight import check_license
from vlmtune.pipelines.train_eval import take_best, with_evaluation
from vlmtune.tracking import StepMetrics
from vlmtune.training import distributed
from vlmtune.training.checkpoint import latest_checkpoint, load_trainable
from vlmtune.training.engine import train
from vlmtune.training.precision import cast_trainable

log = logging.getLogger(__name__)


def output_dir(ctx: RunContext) -> Path:
    return ctx.run_dir / ("adapter" if saves_adapter(ctx.recipe.method) else "trained")


WORKER_MODULE = "vlmtune.pipelines.train_worker"


def run(ctx: RunContext) -> None:
    """Train here, or (``launcher=torchrun``) in torchrun's workers, waiting for them."""
    launcher = ctx.recipe.launcher
    if launcher.name == "torchrun" and not distributed.in_worker():
        check_license(ctx.recipe.dataset)
        ctx.manifest()  # fail here, once, when ingest has not run
        distributed.launch(launcher, WORKER_MODULE, [str(ctx.run_dir), ctx.run_key])
        return
    run_here(ctx, resolve_device(ctx.recipe.device))


def run_here(ctx: RunContext, device: str) -> None:
    """The train stage in this process (one of several under DDP: rank 0 alone writes)."""
    recipe = ctx.recipe
    check_license(recipe.dataset)
    manifest = ctx.manifest()
    seed_everything(recipe.train.seed)
    loaded, tuned = _model_with_method(recipe)
    dataset = ConversationDataset(
        ctx.data_dir / "train.jsonl", Path(manifest["image_root"]), loaded.tokenizer,
        loaded.images, template=get_template(recipe.model.chat_template),
        system=recipe.model.system_prompt, max_length=recipe.train.max_length)
    ctx.tracker.log_metrics({"train/trainable_params": tuned.trainable,
                             "train/total_params": tuned.total})
    step_metrics, step_log = StepMetrics(ctx.tracker), StepLog(ctx.run_dir)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        step_log(step, metrics)  # logs/steps.jsonl: the curves that plots and compare read
        step_metrics(step, metrics)

    if recipe.train.eval_every is not None and distributed.is_main():  # eval/<b>/accuracy
        on_step = with_evaluation(ctx, loaded, tuned.model, on_step)
    try:
        result = train(
            tuned.model, dataset=dataset,
            collate_fn=Collator(loaded.tokenizer.pad_token_id, loaded.images.collate),
            param_groups=tuned.param_groups, cfg=recipe.train, work_dir=ctx.run_dir / "logs",
            checkpoint_dir=ctx.run_dir / "checkpoints", on_step=on_step,
            extra_meta={"run_key": ctx.run_key}, device=device,
            before_checkpoint=lambda step: step_metrics.flush(), strategy=recipe.strategy)
    finally:
        step_metrics.flush()  # also when interrupted: every logged step reaches MLflow
    if not distributed.is_main():
        return
    if result.model_consumed:  # sharded in place: a fresh model takes the final weights
        tuned = _with_final_weights(ctx, ctx.run_dir / "checkpoints", result.iterations)
    take_best(ctx, tuned.model)  # train.keep_best: the output is the best checkpoint's
    cast_trainable(tuned.model, DTYPES[recipe.model.dtype])  # trained in fp32, saved in dtype
    if result.resumed_from is not None:
        log.info("train: resumed at iteration %d of %d", result.resumed_from, result.iterations)
    out = output_dir(ctx)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_trained(tuned, tmp)
    if tuned.kind == "full":
        loaded.tokenizer.save_pretrained(tmp)
        loaded.family.save_processing(loaded.images, tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def _with_final_weights(ctx: RunContext, checkpoints: Path, iterations: int):
    """The recipe's model and method again, with the trainable weights of the checkpoint the
    sharded training wrote at its last iteration."""
    recipe = ctx.recipe
    final = latest_checkpoint(checkpoints)
    if final is None or final.iteration != iterations:
        raise StageError(f"train: no checkpoint at iteration {iterations} in {checkpoints} "
                         f"after training with strategy={recipe.strategy.name}")
    _, tuned = _model_with_method(recipe)
    load_trainable(tuned.model, final.path)
    return tuned


def _model_with_method(recipe):
    """The recipe's model, loaded, with its method (LoRA, PLoRA, freeze preset …) applied."""
    loaded = load_model(ensure_model_dir(recipe.model, recipe.cache_dir), recipe.model,
                        nf4=recipe.method.name == "qlora")
    return loaded, apply_method(loaded.model, loaded.family, recipe.method, lr=recipe.train.lr,
                                projector_lr=recipe.train.projector_lr,
                                weight_decay=recipe.train.weight_decay,
                                image_token_id=loaded.image_token_id)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

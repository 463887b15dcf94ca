"""The training engine seam: an mmengine Runner built from plain values.

The only module family that imports mmengine. Callers hand over a model, a dataset, a
collate function and the optimizer's parameter groups; they get back the trained model.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import shutil
import tempfile
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.model import BaseModel, MMDistributedDataParallel
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import Runner
from torch.utils.data import DataLoader, Dataset

from vlmtune.config.schema import StrategyConfig, TrainConfig
from vlmtune.errors import ConfigError
from vlmtune.progress import Bar, progress_bar
from vlmtune.training import checkpoint as ckpt_io
from vlmtune.training import distributed
from vlmtune.training import precision as prec
from vlmtune.training.hooks import CheckpointHook, ResumeHook, StepCallback, StepMetricsHook
from vlmtune.training.packing import PackedCollator, PackedDataset, packing_error
from vlmtune.training.sampler import (
    EpochBatchSampler,
    LengthGroupedBatchSampler,
    ShuffleBatchSampler,
)
from vlmtune.training.shard_state import strategy_state
from vlmtune.training.strategies import ZERO_STAGES, is_sharded

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    iterations: int
    resumed_from: int | None
    # A sharded strategy wrapped the model in place (FSDP units, ZeRO-3 partitions): the
    # trained weights are the last checkpoint's trainable.safetensors, not the model's.
    model_consumed: bool = False


class _LossModel(BaseModel):
    """Adapts a transformers model (returning ``.loss``) to mmengine's ``train_step``; the
    forward runs under autocast to ``autocast_dtype`` when one is given."""

    def __init__(self, model: torch.nn.Module, *, device: str = "cpu",
                 autocast_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.model = model
        self._autocast = (device, autocast_dtype)
        # No KV cache while training (transformers builds one per forward unless told not to).
        params = inspect.signature(model.forward).parameters.values()
        takes = {p.name for p in params} | {"*" for p in params if p.kind == p.VAR_KEYWORD}
        self._no_cache = {"use_cache": False} if takes & {"use_cache", "*"} else {}
        self._mode: bool | None = None

    def train(self, mode: bool = True) -> _LossModel:
        """Switch modes only on a change: mmengine calls ``train()`` before every iteration,
        and walking every submodule each time costs a few percent of a small model's step."""
        if mode != self._mode:
            super().train(mode)
            self._mode = mode
        return self

    def forward(self, input_ids, attention_mask, labels, mode: str = "loss", position_ids=None,
                **image_inputs):
        if position_ids is not None:
            # Packed rows: without a 2-D mask the model isolates each sample by its positions.
            image_inputs["position_ids"], attention_mask = position_ids, None
        with prec.autocast(*self._autocast):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                             **self._no_cache, **image_inputs)
        return {"loss": out.loss.float()}

    def init_weights(self) -> None:
        """The wrapped model is already initialised (or pretrained): never re-initialise it."""


def total_iterations(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """``train.max_iters``, or ``train.epochs`` worth of batches (a multiple of grad_accum)."""
    if cfg.max_iters is not None:
        return cfg.max_iters
    return math.ceil(batches_per_epoch * cfg.epochs / cfg.grad_accum) * cfg.grad_accum


def build_batch_sampler(dataset: Dataset, cfg: TrainConfig, start: int = 0, *, rank: int = 0,
                        world_size: int = 1) -> EpochBatchSampler:
    """Length-grouped batches (``train.group_by_length``) if the dataset tells each sample's
    modality and length (``modality_lengths()``), else seeded shuffled batches; the first
    ``start`` batches are skipped without being drawn. Under DDP a global batch holds
    ``train.batch_size`` samples per rank and each rank draws its own disjoint share."""
    size = cfg.batch_size * world_size
    if cfg.group_by_length and hasattr(dataset, "modality_lengths"):
        sampler: EpochBatchSampler = LengthGroupedBatchSampler(dataset.modality_lengths(), size,
                                                               cfg.seed, start)
    else:
        if cfg.group_by_length:
            log.info("train.group_by_length: %s has no modality_lengths(); shuffling instead",
                     type(dataset).__name__)
        sampler = ShuffleBatchSampler(len(dataset), size, cfg.seed, start)
    return sampler.shard(rank, world_size)


def train(model: torch.nn.Module, *, dataset: Dataset, collate_fn, param_groups: list[dict],
          cfg: TrainConfig, work_dir: Path, checkpoint_dir: Path, on_step: StepCallback,
          extra_meta: dict[str, Any] | None = None, device: str = "cpu",
          before_checkpoint: Callable[[int], None] | None = None,
          strategy: StrategyConfig | None = None) -> TrainResult:
    """Train ``model`` in place on ``device``, resuming from the newest completed checkpoint.

    On resume the batch sampler starts where the checkpoint left off, so mmengine's replay of
    the data loader up to that iteration loads nothing. Trainable parameters are cast to fp32
    first and stay so (master weights; ``training.precision``): cast them to the dtype to save
    in afterwards. ``before_checkpoint(step)`` runs before each checkpoint is written (e.g. to
    flush buffered metrics up to ``step``).

    ``strategy`` (default ddp): a sharded one trains through mmengine's FlexibleRunner and
    consumes ``model`` (:attr:`TrainResult.model_consumed`).
    """
    precision = prec.resolve_precision(cfg.precision, device)
    prec.keep_master_weights(model)
    return _train(model, dataset, collate_fn, param_groups, cfg, work_dir, checkpoint_dir,
                  on_step, extra_meta or {}, device, precision, before_checkpoint,
                  strategy or StrategyConfig())


def _train(model, dataset, collate_fn, param_groups, cfg, work_dir, checkpoint_dir, on_step,
           extra_meta, device, precision, before_checkpoint, strategy) -> TrainResult:
    sharded = is_sharded(strategy.name)
    deepspeed = strategy.name in ZERO_STAGES  # DeepSpeed's own bf16/fp16, our autocast
    # mmengine's AMP wrapper autocasts
    amp = device.startswith("cuda") and precision != "fp32" and not deepspeed
    autocast = None if amp else prec.autocast_dtype(model, precision)
    if cfg.packing:
        if not hasattr(dataset, "modality_lengths"):
            raise ConfigError(f"train.packing=true needs a dataset that tells which samples are "
                              f"text-only (modality_lengths()); {type(dataset).__name__} does not")
        dataset, collate_fn = _packed(model, dataset, collate_fn, cfg,
                                      autocast or prec.autocast_dtype(model, "fp32"))
    batch_sampler = build_batch_sampler(dataset, cfg, rank=distributed.rank(),
                                        world_size=distributed.world_size())
    max_iters = total_iterations(cfg, len(batch_sampler))
    resume = ckpt_io.latest_checkpoint(checkpoint_dir)
    if resume is not None and resume.iteration >= max_iters:
        ckpt_io.load_trainable(model, resume.path)
        log.info("training already finished at %s", resume.path)
        return TrainResult(max_iters, resume.iteration)

    if not hasattr(dataset, "metainfo"):
        dataset.metainfo = {}  # mmengine's visualizer asks for it
    if resume is not None:  # before any strategy wraps (shards) the model
        ckpt_io.load_trainable(model, resume.path)
    done = resume.iteration if resume else 0
    batch_sampler.start = done  # resume: start after the batches already trained on
    loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn,
                        num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    log.info("train: precision %s on %s%s", precision, device,
             f" (autocast to {autocast})" if autocast else "")
    main = distributed.is_main()  # rank 0 alone logs, draws progress and writes the run dir
    logs = work_dir if main else Path(tempfile.mkdtemp(prefix="vlmtune-rank-"))
    bars = (progress_bar("train", total=max_iters, completed=done) if main
            else nullcontext(Bar(None, None)))
    state = functools.partial(strategy_state, strategy=strategy.name,
                              state_dict_type=strategy.state_dict_type)
    with bars as bar:
        hooks = [StepMetricsHook(on_step, bar),
                 CheckpointHook(checkpoint_dir, cfg.save_every, cfg.keep_last_n, max_iters,
                                extra_meta, before_save=before_checkpoint, state=state)]
        if resume is not None:
            hooks.append(ResumeHook(resume, state=state))
        if sharded:
            from vlmtune.training import flexible  # mmengine's FlexibleRunner, deepspeed

            make_runner = functools.partial(
                flexible.build_runner, strategy=strategy, cfg=cfg, precision=precision,
                device=device, optimizer=optimizer, amp_precision=precision if amp else None)
        else:
            make_runner = functools.partial(
                _Runner, device=device,
                optim_wrapper=_optim_wrapper(optimizer, cfg, precision if amp else None))
        runner = make_runner(
            model=_LossModel(model, device=device, autocast_dtype=autocast),
            work_dir=str(logs),
            train_dataloader=loader,
            train_cfg={"by_epoch": False, "max_iters": max_iters, "val_interval": max_iters + 1},
            param_scheduler=_schedule(cfg, max_iters),
            # Our sampler is seeded per epoch itself: no DistSamplerSeedHook.
            default_hooks={"checkpoint": None, "sampler_seed": None,
                           "logger": {"type": "LoggerHook", "interval": max(1, max_iters // 10)}},
            custom_hooks=hooks,
            randomness={"seed": cfg.seed},
            log_level="WARNING",
            experiment_name=f"vlmtune-{uuid.uuid4().hex[:8]}",
            default_scope=None,
        )
        try:
            runner.train()
        finally:
            if not main:
                shutil.rmtree(logs, ignore_errors=True)  # this rank's mmengine scratch
    return TrainResult(max_iters, resume.iteration if resume else None, model_consumed=sharded)


class _Runner(Runner):
    """mmengine's Runner, moving the model to ``device`` (its own moves it to the first CUDA
    device whenever one exists, whatever was asked) and, in a process group of several
    ranks, wrapping it in DDP (mmengine's ``launcher='pytorch'`` would pass CUDA device ids,
    which gloo on the CPU refuses)."""

    def __init__(self, *, device: str, **kwargs: Any) -> None:
        self._device = device
        super().__init__(launcher="none", **kwargs)

    def wrap_model(self, model_wrapper_cfg, model):
        model = model.to(self._device)  # the data preprocessor follows: batches go there too
        if distributed.world_size() == 1:
            return model
        ids = [torch.device(self._device).index] if self._device.startswith("cuda") else None
        # Unused parameters: a text-only batch leaves the projector without gradients.
        return MMDistributedDataParallel(module=model, device_ids=ids,
                                         find_unused_parameters=True)


def _optim_wrapper(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   amp_precision: str | None) -> OptimWrapper:
    """Plain, or mmengine's AMP wrapper on CUDA: fp16 with dynamic loss scaling, bf16 (whose
    range is fp32's) without."""
    kwargs = {"optimizer": optimizer, "accumulative_counts": cfg.grad_accum,
              "clip_grad": {"max_norm": cfg.max_grad_norm} if cfg.max_grad_norm else None}
    if amp_precision is None:
        return OptimWrapper(**kwargs)
    scale = "dynamic" if amp_precision == "fp16" else {"enabled": False}
    return AmpOptimWrapper(loss_scale=scale, dtype=prec.DTYPES[amp_precision], **kwargs)


def _packed(model: torch.nn.Module, dataset: Dataset, collate_fn, cfg: TrainConfig,
            autocast: torch.dtype | None):
    """The dataset with text-only samples packed, once the model is seen to keep them apart
    (checked on the CPU, before the model moves)."""
    packed = PackedDataset(dataset, cfg.max_length)
    first = next((item for item in packed.items if len(item) > 1), None)
    if first is not None:
        loss_model = _LossModel(model, autocast_dtype=autocast)
        was_training = model.training
        loss_model.eval()
        error = packing_error(lambda batch: loss_model(**batch)["loss"],
                              [dataset[i] for i in first[:4]], collate_fn)
        model.train(was_training)
        if error:
            raise ConfigError(f"train.packing=true: {error} (it needs a model that isolates "
                              "packed samples by position_ids); set train.packing=false")
    return packed, PackedCollator(collate_fn)


def _schedule(cfg: TrainConfig, max_iters: int) -> list[dict]:
    """Linear warmup (if any) then cosine decay to 0, stepped every iteration.

    mmengine's LinearLR reaches the full rate at its last iteration, so a one-iteration warmup
    would never ramp up (and the cosine would then decay from lr * 1e-3): it is left out.
    """
    warmup = min(round(cfg.warmup_ratio * max_iters), max_iters - 1)
    if warmup == 1:
        warmup = 0
    schedule = []
    if warmup > 0:
        schedule.append({"type": "LinearLR", "start_factor": 1e-3, "by_epoch": False,
                         "begin": 0, "end": warmup})
    schedule.append({"type": "CosineAnnealingLR", "by_epoch": False, "begin": warmup,
                     "end": max_iters, "T_max": max_iters - warmup, "eta_min": 0.0})
    return schedule

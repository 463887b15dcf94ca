"""The training engine seam: an mmengine Runner built from plain values.

The only module family that imports mmengine. Callers hand over a model, a dataset, a
collate function and the optimizer's parameter groups; they get back the trained model.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from mmengine.runner import Runner
from torch.utils.data import DataLoader, Dataset

from vlmtune.config.schema import TrainConfig
from vlmtune.progress import progress_bar
from vlmtune.training import checkpoint as ckpt_io
from vlmtune.training.hooks import CheckpointHook, ResumeHook, StepCallback, StepMetricsHook
from vlmtune.training.sampler import SeededShuffleSampler

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    iterations: int
    resumed_from: int | None


class _LossModel(BaseModel):
    """Adapts a transformers model (returning ``.loss``) to mmengine's ``train_step``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels, mode: str = "loss", **image_inputs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                         **image_inputs)
        return {"loss": out.loss}

    def init_weights(self) -> None:
        """The wrapped model is already initialised (or pretrained): never re-initialise it."""


def total_iterations(cfg: TrainConfig, num_samples: int) -> int:
    """``train.max_iters``, or ``train.epochs`` worth of batches (a multiple of grad_accum)."""
    if cfg.max_iters is not None:
        return cfg.max_iters
    per_epoch = math.ceil(num_samples / cfg.batch_size)
    return math.ceil(per_epoch * cfg.epochs / cfg.grad_accum) * cfg.grad_accum


def train(model: torch.nn.Module, *, dataset: Dataset, collate_fn, param_groups: list[dict],
          cfg: TrainConfig, work_dir: Path, checkpoint_dir: Path, on_step: StepCallback,
          extra_meta: dict[str, Any] | None = None) -> TrainResult:
    """Train ``model`` in place, resuming from the newest completed checkpoint if any."""
    max_iters = total_iterations(cfg, len(dataset))
    resume = ckpt_io.latest_checkpoint(checkpoint_dir)
    if resume is not None and resume.iteration >= max_iters:
        ckpt_io.load_trainable(model, resume.path)
        log.info("training already finished at %s", resume.path)
        return TrainResult(max_iters, resume.iteration)

    if not hasattr(dataset, "metainfo"):
        dataset.metainfo = {}  # mmengine's visualizer asks for it
    loader = DataLoader(dataset, batch_size=cfg.batch_size,
                        sampler=SeededShuffleSampler(len(dataset), cfg.seed),
                        collate_fn=collate_fn, num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed))
    optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    clip = {"max_norm": cfg.max_grad_norm} if cfg.max_grad_norm else None
    optim_wrapper = OptimWrapper(optimizer, accumulative_counts=cfg.grad_accum, clip_grad=clip)
    done = resume.iteration if resume else 0
    with progress_bar("train", total=max_iters, completed=done) as bar:
        hooks = [StepMetricsHook(on_step, bar),
                 CheckpointHook(checkpoint_dir, cfg.save_every, cfg.keep_last_n, max_iters,
                                extra_meta or {})]
        if resume is not None:
            hooks.append(ResumeHook(resume))
        runner = Runner(
            model=_LossModel(model),
            work_dir=str(work_dir),
            train_dataloader=loader,
            train_cfg={"by_epoch": False, "max_iters": max_iters, "val_interval": max_iters + 1},
            optim_wrapper=optim_wrapper,
            param_scheduler=_schedule(cfg, max_iters),
            default_hooks={"checkpoint": None, "logger": {"type": "LoggerHook",
                                                          "interval": max(1, max_iters // 10)}},
            custom_hooks=hooks,
            launcher="none",
            randomness={"seed": cfg.seed},
            log_level="WARNING",
            experiment_name=f"vlmtune-{uuid.uuid4().hex[:8]}",
            default_scope=None,
        )
        runner.train()
    return TrainResult(max_iters, resume.iteration if resume else None)


def _schedule(cfg: TrainConfig, max_iters: int) -> list[dict]:
    """Linear warmup (if any) then cosine decay to 0, stepped every iteration."""
    warmup = min(round(cfg.warmup_ratio * max_iters), max_iters - 1)
    schedule = []
    if warmup > 0:
        schedule.append({"type": "LinearLR", "start_factor": 1e-3, "by_epoch": False,
                         "begin": 0, "end": warmup})
    schedule.append({"type": "CosineAnnealingLR", "by_epoch": False, "begin": warmup,
                     "end": max_iters, "T_max": max_iters - warmup, "eta_min": 0.0})
    return schedule

"""The sharded strategies' side of the engine: mmengine's FlexibleRunner with DeepSpeed ZeRO-2/3
or FSDP (``strategy=deepspeed_zero2|deepspeed_zero3|fsdp``, under ``launcher=torchrun``).

The process group is ours (NCCL, or gloo on the CPU), so the runner is told ``launcher='pytorch'``
only to know it is distributed. FSDP clips by the global norm over every rank's shard (the
plain ``clip_grad_norm_`` of mmengine's wrapper would see one shard); DeepSpeed clips itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from mmengine._strategy import FSDPStrategy
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.runner import FlexibleRunner

from vlmtune.config.schema import StrategyConfig, TrainConfig
from vlmtune.training import distributed
from vlmtune.training import precision as prec
from vlmtune.training.shard_state import inner_name
from vlmtune.training.strategies import ZERO_STAGES, flexible_runner_config


class _GlobalNormClip:
    """Clip gradients by their norm over all ranks (each holds a disjoint shard of them)."""

    clip_grad_kwargs: dict | None
    optimizer: torch.optim.Optimizer

    def _clip_grad(self) -> None:
        max_norm = float(self.clip_grad_kwargs["max_norm"])
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"]
                 if p.requires_grad and p.grad is not None]
        device = distributed.collective_device()
        squares = torch.zeros((), dtype=torch.float64, device=device)
        for grad in grads:
            squares += grad.detach().double().pow(2).sum().to(device)
        if distributed.world_size() > 1:
            dist.all_reduce(squares)
        norm = float(squares.sqrt())
        coef = min(1.0, max_norm / (norm + 1e-6))  # as torch.nn.utils.clip_grad_norm_
        if coef < 1.0:
            for grad in grads:
                grad.mul_(coef)
        self.message_hub.update_scalar("train/grad_norm", norm)


class ShardedOptimWrapper(_GlobalNormClip, OptimWrapper):
    """fp32 (e.g. on the CPU)."""


class ShardedAmpOptimWrapper(_GlobalNormClip, AmpOptimWrapper):
    """CUDA autocast, with FSDP's sharded gradient scaler under fp16."""


class _FSDPStrategy(FSDPStrategy):
    """mmengine's FSDPStrategy, rebuilding the optimizer over the sharded parameters from its
    own parameter groups (mmengine's rebuild passes every default back to the constructor,
    which torch's AdamW no longer takes)."""

    def build_optim_wrapper(self, optim_wrapper, model=None):
        optimizer = optim_wrapper.optimizer
        sharded = {inner_name(n): p for n, p in model.named_parameters()}
        groups = [{**{k: v for k, v in group.items() if k != "params"},
                   "params": [sharded[inner_name(self.id_to_name[id(p)])]
                              for p in group["params"]]}
                  for group in optimizer.param_groups]
        optim_wrapper.optimizer = type(optimizer)(groups)
        return optim_wrapper


def _deepspeed_strategy() -> type:
    """mmengine's DeepSpeedStrategy, built without registering DeepSpeed's own optimizers
    (mmengine imports ``deepspeed.runtime.fp16.onebit``, gone from DeepSpeed 0.19; vlmtune
    hands DeepSpeed torch's AdamW)."""
    from mmengine._strategy import deepspeed as mm_deepspeed

    class _DeepSpeedStrategy(mm_deepspeed.DeepSpeedStrategy):
        def __init__(self, **kwargs: Any) -> None:
            register = mm_deepspeed.register_deepspeed_optimizers
            mm_deepspeed.register_deepspeed_optimizers = _registering_what_imports(register)
            try:
                super().__init__(**kwargs)
            finally:
                mm_deepspeed.register_deepspeed_optimizers = register

    return _DeepSpeedStrategy


def _registering_what_imports(register):
    def tolerant() -> list[str]:
        try:
            return register()
        except ImportError:
            return []

    return tolerant


def optim_wrapper(optimizer: torch.optim.Optimizer, cfg: TrainConfig, strategy: str,
                  amp_precision: str | None) -> Any:
    if strategy in ZERO_STAGES:
        from mmengine._strategy.deepspeed import DeepSpeedOptimWrapper  # imports deepspeed

        return DeepSpeedOptimWrapper(optimizer)  # accumulation, clipping: DeepSpeed's config
    kwargs = {"optimizer": optimizer, "accumulative_counts": cfg.grad_accum,
              "clip_grad": {"max_norm": cfg.max_grad_norm} if cfg.max_grad_norm else None}
    if amp_precision is None:
        return ShardedOptimWrapper(**kwargs)
    scale = "dynamic" if amp_precision == "fp16" else {"enabled": False}
    return ShardedAmpOptimWrapper(loss_scale=scale, dtype=prec.DTYPES[amp_precision],
                                  use_fsdp=True, **kwargs)


def build_runner(*, strategy: StrategyConfig, cfg: TrainConfig, precision: str, device: str,
                 optimizer: torch.optim.Optimizer, amp_precision: str | None,
                 **runner_kwargs: Any) -> FlexibleRunner:
    """A FlexibleRunner for ``strategy``; ``runner_kwargs`` are the plain Runner's (model,
    data loader, schedules, hooks …)."""
    config = flexible_runner_config(strategy.name, grad_accum=cfg.grad_accum,
                                    max_grad_norm=cfg.max_grad_norm, batch_size=cfg.batch_size,
                                    precision=precision, device=device,
                                    offload_optimizer=strategy.offload_optimizer,
                                    model=runner_kwargs["model"])
    config["type"] = (_FSDPStrategy if config["type"] == "FSDPStrategy"
                      else _deepspeed_strategy())
    return FlexibleRunner(strategy=config, launcher="pytorch",
                          optim_wrapper=optim_wrapper(optimizer, cfg, strategy.name,
                                                      amp_precision),
                          **runner_kwargs)

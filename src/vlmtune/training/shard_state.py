"""What a checkpoint needs from each strategy: the trainable weights, whole, on rank 0, and the
optimizer state, written and read back the way the strategy holds it.

- :class:`ReplicatedState` (one process, DDP): every rank holds everything; rank 0 writes
  ``optimizer.pt``.
- :class:`FSDPState`: the trainable weights are gathered from the shards; the optimizer state
  is gathered into one ``optimizer.pt`` (``strategy.state_dict_type=full``) or kept as one
  ``optimizer_rank<R>.pt`` per rank (``local``).
- :class:`DeepSpeedState`: the trainable weights are gathered (ZeRO-3 partitions them); the
  optimizer partitions and fp32 master weights are DeepSpeed's own checkpoint, one file per
  rank under ``deepspeed/``.

Every method is called on every rank (gathering is collective); paths are the checkpoint's
staging directory, shared by the ranks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from vlmtune.errors import CheckpointError
from vlmtune.training import checkpoint as ckpt_io
from vlmtune.training import distributed

_FSDP_PREFIX = re.compile(r"(^|\.)_fsdp_wrapped_module\.")


def inner_name(name: str) -> str:
    """A parameter's name in the model being trained: without FSDP's wrapper prefixes and the
    engine's ``model.`` (vlmtune.training.engine._LossModel)."""
    name = _FSDP_PREFIX.sub(r"\1", name)
    return name.removeprefix("model.")


class ReplicatedState:
    """One process, or DDP: every rank holds the whole model and optimizer."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.runner.optim_wrapper.optimizer

    def trainable(self) -> dict[str, torch.Tensor] | None:
        if not distributed.is_main():
            return None
        model = self.runner.model
        return ckpt_io.trainable_state(getattr(model, "module", model).model)  # DDP's wrapper

    def save_optimizer(self, directory: Path) -> None:
        if distributed.is_main():
            torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")

    def load_optimizer(self, directory: Path) -> None:
        self.optimizer.load_state_dict(_load(directory / "optimizer.pt"))


class FSDPState(ReplicatedState):
    """PyTorch FSDP (``use_orig_params``): every parameter is a shard of a flat parameter."""

    def __init__(self, runner: Any, *, full_optimizer: bool) -> None:
        super().__init__(runner)
        self.full_optimizer = full_optimizer
        self.offload = str(distributed.collective_device()) != "cpu"  # a no-op copy on the CPU

    def trainable(self) -> dict[str, torch.Tensor] | None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        root = self.runner.model
        with FSDP.summon_full_params(root, writeback=False, rank0_only=True,
                                     offload_to_cpu=self.offload):
            if not distributed.is_main():
                return None
            return {inner_name(n): p.detach().clone().cpu()
                    for n, p in root.named_parameters() if p.requires_grad}

    def _full(self, rank0_only: bool):
        from torch.distributed.fsdp import (
            FullOptimStateDictConfig,
            FullStateDictConfig,
            StateDictType,
        )
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.state_dict_type(
            self.runner.model, StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=self.offload, rank0_only=rank0_only),
            FullOptimStateDictConfig(offload_to_cpu=self.offload, rank0_only=rank0_only))

    def save_optimizer(self, directory: Path) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if not self.full_optimizer:
            torch.save(self.optimizer.state_dict(), directory / _rank_file())
            return
        with self._full(rank0_only=True):
            state = FSDP.optim_state_dict(self.runner.model, self.optimizer)
        if distributed.is_main():
            torch.save(state, directory / "optimizer.pt")

    def load_optimizer(self, directory: Path) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if (directory / "optimizer.pt").exists():
            with self._full(rank0_only=False):
                state = FSDP.optim_state_dict_to_load(
                    self.runner.model, self.optimizer, _load(directory / "optimizer.pt"))
        else:
            state = _load(directory / _rank_file(), what="this rank's optimizer shard "
                          "(strategy.state_dict_type=local: resume with as many processes)")
        self.optimizer.load_state_dict(state)


class DeepSpeedState(ReplicatedState):
    """DeepSpeed ZeRO-2/3 (``runner.model`` is mmengine's wrapper of the DeepSpeed engine)."""

    TAG = "zero"

    @property
    def engine(self) -> Any:
        return self.runner.model.model

    def trainable(self) -> dict[str, torch.Tensor] | None:
        import deepspeed

        named = [(n, p) for n, p in self.engine.module.named_parameters() if p.requires_grad]
        # ZeRO-3 partitions every parameter; ZeRO-2 leaves them whole (a no-op then).
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            if not distributed.is_main():
                return None
            return {inner_name(n): p.detach().clone().float().cpu() for n, p in named}

    def save_optimizer(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory / "deepspeed"), tag=self.TAG,
                                    client_state={}, save_latest=False,
                                    exclude_frozen_parameters=True)

    def load_optimizer(self, directory: Path) -> None:
        if not (directory / "deepspeed" / self.TAG).is_dir():
            raise CheckpointError(f"{directory}: no deepspeed/{self.TAG}/ (written by another "
                                  "strategy?); resume with the strategy that wrote it")
        path, _ = self.engine.load_checkpoint(
            str(directory / "deepspeed"), tag=self.TAG, load_module_strict=False,
            load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise CheckpointError(f"{directory}: DeepSpeed could not load its checkpoint "
                                  "(its log above says why)")


def strategy_state(runner: Any, strategy: str, state_dict_type: str = "full"):
    if strategy == "fsdp":
        return FSDPState(runner, full_optimizer=state_dict_type == "full")
    if strategy.startswith("deepspeed"):
        return DeepSpeedState(runner)
    return ReplicatedState(runner)


def _rank_file() -> str:
    return f"optimizer_rank{distributed.rank()}.pt"


def _load(path: Path, what: str = "the optimizer state") -> Any:
    if not path.exists():
        raise CheckpointError(f"{path.parent}: no {path.name} ({what})")
    return torch.load(path, weights_only=True, map_location="cpu")

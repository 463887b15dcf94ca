"""``strategy=deepspeed_zero2|deepspeed_zero3|fsdp``: mmengine FlexibleRunner configs.

:func:`check_strategy` refuses a strategy this machine or recipe cannot run (one line naming
``strategy``); :func:`flexible_runner_config` builds the ``strategy`` dict mmengine's
``FlexibleRunner`` takes (DeepSpeedStrategy, or FSDPStrategy with one FSDP unit per module
that trains). Both run on CUDA and, for trying a recipe out, on the CPU over gloo. Nothing
here imports mmengine or deepspeed at import time.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vlmtune.errors import ConfigError

ZERO_STAGES = {"deepspeed_zero2": 2, "deepspeed_zero3": 3}
SHARDED = (*ZERO_STAGES, "fsdp")  # through mmengine's FlexibleRunner
FSDP_MIN_PARAMS = 1_000_000  # frozen modules are grouped into FSDP units of about this size


def is_sharded(name: str) -> bool:
    return name in SHARDED


def strategy_missing(name: str) -> list[str]:
    """What ``strategy=name`` needs that this environment lacks."""
    if name in ZERO_STAGES and importlib.util.find_spec("deepspeed") is None:
        return ["the deepspeed package (pip install 'vlmtune[deepspeed]')"]
    return []


def check_strategy(name: str, launcher: str, *, eval_every: int | None = None,
                   method: str = "lora") -> None:
    if not is_sharded(name):
        return
    if missing := strategy_missing(name):
        raise ConfigError(f"strategy={name} needs " + " and ".join(missing))
    if launcher != "torchrun":
        raise ConfigError(f"strategy={name} shards the model over processes: use it with "
                          "launcher=torchrun launcher.nproc_per_node=N")
    if eval_every is not None:
        raise ConfigError(f"train.eval_every with strategy={name}: evaluating during training "
                          "needs the whole model in one process; use strategy=ddp or drop "
                          "train.eval_every")
    if method == "qlora":
        raise ConfigError(f"method=qlora with strategy={name}: 4-bit weights cannot be "
                          "sharded here; use strategy=ddp")


def flexible_runner_config(name: str, *, grad_accum: int, max_grad_norm: float | None,
                           batch_size: int, precision: str, device: str,
                           offload_optimizer: bool = False,
                           model: Any = None) -> dict[str, Any]:
    """The ``strategy`` dict for mmengine's FlexibleRunner (its optimizer wrapper is built by
    the engine: it clips by the global norm of sharded gradients). ``model``: the module FSDP
    will wrap, whose tied parameters (e.g. input and output embeddings) decide what may be an
    FSDP unit."""
    if name in ZERO_STAGES:
        zero: dict[str, Any] = {"stage": ZERO_STAGES[name], "overlap_comm": True,
                                "contiguous_gradients": True}
        if offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if ZERO_STAGES[name] == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        # ZeRO-Offload steps torch's AdamW on the CPU partitions (DeepSpeedCPUAdam, faster,
        # would need DeepSpeed's C++ op built on every machine)
        extra = {"zero_force_ds_cpu_optimizer": False} if offload_optimizer else {}
        return {"type": "DeepSpeedStrategy", "config": extra, "zero_optimization": zero,
                "gradient_accumulation_steps": grad_accum,
                "train_micro_batch_size_per_gpu": batch_size,
                "gradient_clipping": max_grad_norm or 0.0,
                "bf16": {"enabled": precision == "bf16"},
                "fp16": {"enabled": precision == "fp16", "loss_scale": 0}}
    if name == "fsdp":
        import torch

        on_cuda = device.startswith("cuda")
        # FSDP places each unit on device_id; on the CPU it must be told so (else it asks
        # for an accelerator).
        device_id = torch.device(device).index or 0 if on_cuda else torch.device("cpu")
        return {"type": "FSDPStrategy", "state_dict_cfg": "local",
                "model_wrapper": {"type": "MMFullyShardedDataParallel",
                                  "device_id": device_id,
                                  "auto_wrap_policy": fsdp_wrap_policy(
                                      FSDP_MIN_PARAMS, tied_owners(model)),
                                  "use_orig_params": True}}
    raise ConfigError(f"strategy={name} is not a FlexibleRunner strategy")


def fsdp_wrap_policy(min_num_params: int, tied: list[set[int]] = ()):
    """Every module whose own parameters train is an FSDP unit of its own (a unit's flat
    parameter needs one dtype: fp32 trainable weights never share one with bf16 frozen
    weights), the frozen rest is grouped by size; a module holding some but not all the owners
    of a tied parameter (``tied``: the ids of each one's owners) is never a unit, so the tied
    weight stays in one flat parameter."""

    def policy(module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:
            return True
        if not (_trains_itself(module) or nonwrapped_numel >= min_num_params):
            return False
        return not tied or _holds_all_owners(module, tied)

    return policy


def tied_owners(model: Any) -> list[set[int]]:
    """For each parameter owned by several modules, the ids of those modules."""
    if model is None:
        return []
    owners: dict[int, set[int]] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), set()).add(id(module))
    return [ids for ids in owners.values() if len(ids) > 1]


def _holds_all_owners(module, tied: list[set[int]]) -> bool:
    inside = {id(m) for m in module.modules()}
    return all(ids <= inside for ids in tied if ids & inside)


def _trains_itself(module) -> bool:
    own = list(module.parameters(recurse=False))
    return bool(own) and any(p.requires_grad for p in own)

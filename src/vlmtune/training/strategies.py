"""``strategy=deepspeed_zero2|deepspeed_zero3|fsdp``: mmengine FlexibleRunner configs.

:func:`check_strategy` refuses a strategy this machine cannot run (one line naming
``strategy``); :func:`flexible_runner_config` builds the ``strategy`` and ``optim_wrapper``
dicts mmengine's ``FlexibleRunner`` takes (DeepSpeedStrategy + DeepSpeedOptimWrapper, or
FSDPStrategy + AmpOptimWrapper). Nothing here imports mmengine or deepspeed at import time.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from vlmtune.errors import ConfigError

ZERO_STAGES = {"deepspeed_zero2": 2, "deepspeed_zero3": 3}


def strategy_missing(name: str, device: str) -> list[str]:
    """What ``strategy=name`` needs that this machine lacks."""
    missing = [] if device.startswith("cuda") else [
        f"CUDA (device resolves to {device!r})"]
    if name in ZERO_STAGES and importlib.util.find_spec("deepspeed") is None:
        missing.append("the deepspeed package (pip install deepspeed)")
    return missing


def check_strategy(name: str, device: str, launcher: str) -> None:
    if name == "ddp":
        return
    if missing := strategy_missing(name, device):
        raise ConfigError(f"strategy={name} needs " + " and ".join(missing) +
                          "; use strategy=ddp on this machine")
    if launcher != "torchrun":
        raise ConfigError(f"strategy={name} shards the model over processes: use it with "
                          "launcher=torchrun launcher.nproc_per_node=N")
    raise ConfigError(f"strategy={name}: training through mmengine's FlexibleRunner is not "
                      "wired into the train stage yet (flexible_runner_config builds its "
                      "config); use strategy=ddp")


def flexible_runner_config(name: str, *, lr: float, weight_decay: float, grad_accum: int,
                           max_grad_norm: float | None, batch_size: int, precision: str,
                           offload_optimizer: bool = False,
                           state_dict_type: str = "full") -> dict[str, Any]:
    """``{"strategy": …, "optim_wrapper": …}`` for mmengine's FlexibleRunner."""
    optimizer = {"type": "AdamW", "lr": lr, "weight_decay": weight_decay}
    clip = {"max_norm": max_grad_norm} if max_grad_norm else None
    if name in ZERO_STAGES:
        zero: dict[str, Any] = {"stage": ZERO_STAGES[name], "overlap_comm": True,
                                "contiguous_gradients": True}
        if offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if ZERO_STAGES[name] == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        strategy = {"type": "DeepSpeedStrategy", "zero_optimization": zero,
                    "gradient_accumulation_steps": grad_accum,
                    "train_micro_batch_size_per_gpu": batch_size,
                    "gradient_clipping": max_grad_norm or 0.0,
                    "bf16": {"enabled": precision == "bf16"},
                    "fp16": {"enabled": precision == "fp16", "loss_scale": 0}}
        wrapper = {"type": "DeepSpeedOptimWrapper", "optimizer": optimizer}
        return {"strategy": strategy, "optim_wrapper": wrapper}
    if name == "fsdp":
        strategy = {"type": "FSDPStrategy", "state_dict_cfg": state_dict_type,
                    "model_wrapper": {"auto_wrap_policy": {
                        "type": "torch.distributed.fsdp.wrap.size_based_auto_wrap_policy",
                        "min_num_params": 1_000_000},
                        "use_orig_params": True}}
        wrapper = {"type": "AmpOptimWrapper", "optimizer": optimizer,
                   "accumulative_counts": grad_accum, "clip_grad": clip,
                   "dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")}
        return {"strategy": strategy, "optim_wrapper": wrapper}
    raise ConfigError(f"strategy={name} is not a FlexibleRunner strategy")

"""Fine-tuning methods: wrap a loaded model for training and say which parameters learn.

``tutorial`` (the InternVL2 + XTuner FoodieQA set-up): LLM and vision tower frozen, LoRA on the
LLM's linear layers, projector trained. ``adapters_only``: only the LoRA weights train.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from vlmtune.config.schema import MethodConfig
from vlmtune.errors import ConfigError
from vlmtune.models.families import Family

log = logging.getLogger(__name__)


@dataclass
class TrainableModel:
    model: Any
    param_groups: list[dict[str, Any]]
    trainable: int
    total: int


def llm_linear_names(model: nn.Module, family: Family) -> list[str]:
    """Full names of every ``nn.Linear`` inside the LLM (never projector, vision or lm_head)."""
    prefix = family.llm + "."
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.startswith(prefix)]


def apply_method(model: nn.Module, family: Family, cfg: MethodConfig, *, lr: float,
                 projector_lr: float | None, weight_decay: float) -> TrainableModel:
    """LoRA-wrap ``model`` per ``cfg`` and build the optimizer's parameter groups."""
    targets = _resolve_targets(model, family, cfg.lora.target_modules)
    save = [family.projector] if cfg.freeze == "tutorial" else None
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, modules_to_save=save, bias="none")
    peft_model = get_peft_model(model, lora)
    projector_params, other_params = [], []
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            (projector_params if _in_projector(name, family) else other_params).append(param)
    groups = [{"params": other_params, "lr": lr, "weight_decay": weight_decay}]
    if projector_params:
        groups.append({"params": projector_params, "lr": projector_lr or lr,
                       "weight_decay": weight_decay, "name": "projector"})
    trainable = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in peft_model.parameters())
    log.info("method %s/%s: %d of %d parameters trainable (%.2f%%)", cfg.name, cfg.freeze,
             trainable, total, 100 * trainable / total)
    return TrainableModel(peft_model, groups, trainable, total)


def load_adapter(model: nn.Module, adapter_dir: Path) -> PeftModel:
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def merge_adapter(model: PeftModel) -> nn.Module:
    """Fold the LoRA update into the base weights (and the trained projector copy into place)."""
    with torch.no_grad():
        return model.merge_and_unload()


def _resolve_targets(model: nn.Module, family: Family, patterns: list[str] | None) -> list[str]:
    names = llm_linear_names(model, family)
    if patterns:
        names = [n for n in names if any(n == p or n.endswith("." + p) for p in patterns)]
        if not names:
            raise ConfigError(f"method.lora.target_modules={patterns} matches no linear layer of "
                              f"the LLM ({family.llm})")
    if not names:
        raise ConfigError(f"model.family={family.name!r}: no linear layers under {family.llm}")
    return names


def _in_projector(param_name: str, family: Family) -> bool:
    return f"{family.projector.rsplit('.', 1)[-1]}." in param_name

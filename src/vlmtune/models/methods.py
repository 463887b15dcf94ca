"""Fine-tuning methods: wrap a loaded model for training and say which parameters learn.

Freeze presets (``method.freeze``) name the parts that train:

=================== ======================== =================================
preset              adapter methods          ``full``
=================== ======================== =================================
projector_only      projector (no adapters)  projector
tutorial            adapters + projector     LLM + projector
xcomposer_pretrain  adapters + vision + proj vision + projector (LLM frozen)
all                 adapters + vision + proj everything
=================== ======================== =================================

Adapter methods put LoRA (``lora``, ``qlora`` on a 4-bit base) or PLoRA (``plora``: only at
image-token positions) on every linear layer of the LLM; the LLM's own weights stay frozen.
Trained parts outside the adapters are saved with the adapter (peft ``modules_to_save``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn

from vlmtune.config.schema import MethodConfig
from vlmtune.errors import ConfigError
from vlmtune.models import plora
from vlmtune.models.families import Family

log = logging.getLogger(__name__)

ADAPTER_METHODS = ("lora", "plora", "qlora")
# preset → (adapters on, parts trained besides the adapters / for `full`)
PRESETS: dict[str, tuple[bool, dict[str, tuple[str, ...]]]] = {
    "projector_only": (False, {"adapter": ("projector",), "full": ("projector",)}),
    "tutorial": (True, {"adapter": ("projector",), "full": ("llm", "projector")}),
    "xcomposer_pretrain": (True, {"adapter": ("vision", "projector"),
                                  "full": ("vision", "projector")}),
    "all": (True, {"adapter": ("vision", "projector"),
                   "full": ("llm", "vision", "projector", "lm_head")}),
}


@dataclass
class TrainableModel:
    model: Any
    param_groups: list[dict[str, Any]]
    trainable: int
    total: int
    # "peft" (save_pretrained adapter), "plora" (vlmtune adapter) or "full" (whole model)
    kind: str


def llm_linear_names(model: nn.Module, family: Family) -> list[str]:
    """Full names of every ``nn.Linear`` inside the LLM (never projector, vision or lm_head)."""
    prefix = family.llm + "."
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name.startswith(prefix)]


def trained_parts(cfg: MethodConfig) -> tuple[bool, tuple[str, ...]]:
    """(adapters on?, the family parts trained besides them) for a method and preset."""
    adapters_on, parts = PRESETS[cfg.freeze]
    if cfg.name == "full":
        return False, parts["full"]
    return adapters_on, parts["adapter"]


def saves_adapter(cfg: MethodConfig) -> bool:
    """Whether training saves an adapter (else the whole model: ``full``, or a preset that
    trains no adapters, e.g. ``projector_only``)."""
    return cfg.name in ADAPTER_METHODS and trained_parts(cfg)[0]


def apply_method(model: nn.Module, family: Family, cfg: MethodConfig, *, lr: float,
                 projector_lr: float | None, weight_decay: float,
                 image_token_id: int | None = None) -> TrainableModel:
    """Wrap ``model`` per ``cfg`` and build the optimizer's parameter groups."""
    adapters_on, parts = trained_parts(cfg)
    modules = [getattr(family, part) for part in parts]
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.name == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if not adapters_on:
        if cfg.name != "full":
            log.warning("method.freeze=%s trains no adapters: method.lora is unused", cfg.freeze)
        wrapped, kind = _freeze_all_but(model, modules), "full"
    elif cfg.name == "plora":
        if image_token_id is None:
            raise ConfigError("method.name='plora' needs the model's image token id")
        wrapped = plora.apply_plora(
            model, target_names=_resolve_targets(model, family, cfg.lora.target_modules),
            image_token_id=image_token_id, r=cfg.lora.r, alpha=cfg.lora.alpha,
            dropout=cfg.lora.dropout, modules_to_save=_short_names(modules) or None)
        kind = "plora"
    else:
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=_resolve_targets(model, family, cfg.lora.target_modules),
                          modules_to_save=_short_names(modules) or None, bias="none")
        wrapped, kind = get_peft_model(model, lora), "peft"
    if cfg.gradient_checkpointing and kind != "full":
        wrapped.enable_input_require_grads()
    groups = _param_groups(wrapped, family, lr, projector_lr, weight_decay)
    trainable = sum(p.numel() for g in groups for p in g["params"])
    total = sum(p.numel() for p in wrapped.parameters())
    log.info("method %s/%s: %d of %d parameters trainable (%.2f%%)", cfg.name, cfg.freeze,
             trainable, total, 100 * trainable / total)
    return TrainableModel(wrapped, groups, trainable, total, kind)


def save_trained(trained: TrainableModel, out: Path) -> None:
    """The method's output directory: a peft/PLoRA adapter, or the whole model (``full``)."""
    if trained.kind == "plora":
        plora.save_plora(trained.model, out)
    else:
        trained.model.save_pretrained(out)


def load_adapter(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """The base model with a saved adapter (LoRA or PLoRA) attached, for inference."""
    if plora.is_plora_adapter(adapter_dir):
        return plora.load_plora(model, adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold a LoRA update into the base weights (PLoRA refuses: PLoRANotMergeable)."""
    with torch.no_grad():
        return model.merge_and_unload()


def _freeze_all_but(model: nn.Module, prefixes: list[str]) -> nn.Module:
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(p + ".") for p in prefixes))
    return model


def _short_names(prefixes: list[str]) -> list[str]:
    """peft matches ``modules_to_save`` by a module-name suffix."""
    return [p.rsplit(".", 1)[-1] for p in prefixes if p]


def _param_groups(model: nn.Module, family: Family, lr: float, projector_lr: float | None,
                  weight_decay: float) -> list[dict[str, Any]]:
    projector_key = f"{family.projector.rsplit('.', 1)[-1]}."
    projector, other = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (projector if projector_key in name else other).append(param)
    groups = [{"params": other, "lr": lr, "weight_decay": weight_decay, "name": "default"}]
    if projector:
        groups.append({"params": projector, "lr": projector_lr or lr,
                       "weight_decay": weight_decay, "name": "projector"})
    return [g for g in groups if g["params"]]


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

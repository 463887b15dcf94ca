"""A saved peft LoRA adapter as plain tensors: per-module (A, B, scale) and replaced weights.

Reads ``adapter_config.json`` + ``adapter_model.safetensors`` without building a model. The
scale is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), per module when ``rank_pattern`` /
``alpha_pattern`` say so. ``modules_to_save`` tensors replace the base weights as they are.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlmtune.errors import CheckpointError

PREFIX = "base_model.model."


@dataclass
class LoraPair:
    a: torch.Tensor
    b: torch.Tensor
    scale: float
    embedding: bool = False

    def delta(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The weight update ``B·A·scale`` in float32 (``(B·A)ᵀ`` for an embedding)."""
        a = self.a.to(device=device, dtype=torch.float32)
        b = self.b.to(device=device, dtype=torch.float32)
        delta = (b @ a).mul_(self.scale)  # in place: one weight-sized temporary, not two
        return delta.T if self.embedding else delta


@dataclass
class Adapter:
    # loaded-model parameter name (``….weight``) → its LoRA pair
    pairs: dict[str, LoraPair] = field(default_factory=dict)
    # loaded-model parameter name → the tensor that replaces it (``modules_to_save``)
    replaced: dict[str, torch.Tensor] = field(default_factory=dict)

    def nbytes(self) -> int:
        tensors = [t for p in self.pairs.values() for t in (p.a, p.b)]
        tensors += list(self.replaced.values())
        return sum(t.numel() * t.element_size() for t in tensors)


def lora_scale(r: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(r) if rslora else alpha / r


def read_adapter(adapter_dir: Path) -> Adapter:
    """Read a peft LoRA adapter directory (the format ``PeftModel.save_pretrained`` writes)."""
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not config_file.exists() or not weights.exists():
        raise CheckpointError(f"{adapter_dir} is not a peft adapter (adapter_config.json + "
                              "adapter_model.safetensors); `vlmtune checkpoint inspect` says "
                              "what it is")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{config_file}: peft_type={config.get('peft_type')!r}; only LORA "
                              "adapters can be merged")
    if config.get("use_dora"):
        raise CheckpointError(f"{config_file}: DoRA adapters are not supported by the merge")
    if config.get("fan_in_fan_out"):
        raise CheckpointError(f"{config_file}: fan_in_fan_out adapters are not supported")
    tensors = load_file(str(weights))
    return adapter_from_tensors(tensors, r=int(config["r"]), alpha=float(config["lora_alpha"]),
                                rslora=bool(config.get("use_rslora")),
                                rank_pattern=config.get("rank_pattern") or {},
                                alpha_pattern=config.get("alpha_pattern") or {})


def adapter_from_tensors(tensors: dict[str, torch.Tensor], *, r: int, alpha: float,
                         rslora: bool = False, rank_pattern: dict | None = None,
                         alpha_pattern: dict | None = None) -> Adapter:
    """Group peft-named tensors (``base_model.model.<module>.lora_A.weight`` …) by module."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    adapter = Adapter()
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                             r"(?:\.[A-Za-z0-9_]+)?(?:\.weight)?", name)
        if "lora_magnitude_vector" in name:
            raise CheckpointError(f"adapter tensor {key!r} is DoRA's; DoRA is not supported")
        if match:
            halves.setdefault(match.group(1), {})[match.group(2).replace("embedding_", "")] = \
                tensor
            if "embedding" in match.group(2):
                halves[match.group(1)]["embedding"] = torch.empty(0)
        elif ".original_module." not in name:
            adapter.replaced[name.replace(".modules_to_save.default.", ".")] = tensor
    for module, parts in halves.items():
        if set(parts) - {"embedding"} != {"lora_A", "lora_B"}:
            raise CheckpointError(f"adapter module {module!r} lacks lora_A or lora_B")
        rank = _pattern_value(module, rank_pattern or {}, r)
        scale = lora_scale(int(rank), float(_pattern_value(module, alpha_pattern or {}, alpha)),
                           rslora)
        adapter.pairs[module + ".weight"] = LoraPair(parts["lora_A"], parts["lora_B"], scale,
                                                     embedding="embedding" in parts)
    return adapter


def _pattern_value(module: str, patterns: dict, default: float) -> float:
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return value
    return default

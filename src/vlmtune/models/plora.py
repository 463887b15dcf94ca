"""PLoRA, the "Partial LoRA" of InternLM-XComposer2, as a peft LoRA layer with a position mask.

For a wrapped linear layer ``y = W·x (+ b) + m ⊙ (B·A·dropout(x)) · alpha / r``, where ``m`` is 1
at the positions of the current forward that hold an image token (``<IMG_CONTEXT>``) and 0
elsewhere: text tokens, and every decode step after the prompt, see the base model unchanged.

How the mask reaches the layers: ``apply_plora`` puts one small :class:`VisualMask` on the
top-level model. A forward pre-hook records ``input_ids == image_token_id`` into it before each
forward and a forward hook clears it afterwards; every :class:`PLoraLinear` reads it. A forward
given only ``inputs_embeds``, or a hidden state whose leading shape is not the mask's, gets no
update. Under gradient checkpointing the mask is kept after a training forward (the backward
recomputes the layers) until the next forward replaces it.

Saving: peft writes the directory (``adapter_config.json`` + ``adapter_model.safetensors``,
LoRA's weight names), then ``adapter_config.json`` gets ``"peft_type": "PLORA"`` and a ``plora``
section. peft alone refuses that type, so a PLoRA adapter is never silently loaded (or merged)
as a plain LoRA applied at every position; ``load_plora`` loads it.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from vlmtune.errors import CheckpointError, ConfigError, VlmtuneError

log = logging.getLogger(__name__)

PLORA_XCOMPOSER2 = dict(r=256, alpha=256)  # InternLM-XComposer2 on wqkv, wo, w1, w2, w3
PEFT_TYPE = "PLORA"
FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


class PLoRANotMergeable(VlmtuneError):
    """PLoRA's update applies only at image-token positions, so no weight matrix can hold it."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "a PLoRA adapter cannot be merged into the base weights: its update B·A·x is added "
            "only at image-token positions of each forward (a position mask), which no single "
            "weight matrix can express. Keep the adapter directory and load it through vlmtune "
            "(vlmtune.models.plora.load_plora)." + (f" ({detail})" if detail else ""))


@dataclass
class VisualMask:
    """The image-token positions of the forward in progress, shared by every PLoRA layer."""

    image_token_id: int
    mask: torch.Tensor | None = None  # bool [batch, seq], or None: no update anywhere
    any_visual: bool = False
    hooks: list[Any] = field(default_factory=list, repr=False)

    def record(self, input_ids: Any) -> None:
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() >= 1:
            self.mask = input_ids == self.image_token_id
            self.any_visual = bool(self.mask.any())
        else:
            self.clear()

    def clear(self) -> None:
        self.mask, self.any_visual = None, False

    def for_input(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[..., 1]`` bool mask aligned with ``x``, or None when ``x`` gets no update.

        An all-false mask is still returned while gradients are on, so that every PLoRA weight
        is part of the graph (zero gradient) whatever the batch holds.
        """
        mask = self.mask
        if mask is None or tuple(mask.shape) != tuple(x.shape[:-1]):
            return None
        if not self.any_visual and not torch.is_grad_enabled():
            return None
        return mask.to(x.device).unsqueeze(-1)


class PLoraLinear(LoraLinear):
    """peft's LoRA ``Linear`` whose update is added only where the shared mask is true.

    peft builds it (``LoraConfig._register_custom_module``) with the constructor of its own
    ``Linear``; ``attach_mask`` then gives it the model's :class:`VisualMask`.
    """

    plora_mask: VisualMask | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("PLoRA layers do not support mixed-adapter batches (adapter_names)")
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters or self.plora_mask is None:
            return result
        mask = self.plora_mask.for_input(x)
        if mask is None:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            h = self._cast_input_dtype(x, lora_a.weight.dtype)
            update = lora_b(lora_a(self.lora_dropout[name](h))) * self.scaling[name]
            result = torch.where(mask, result + update.to(result.dtype), result)
        return result

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise PLoRANotMergeable()

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        raise PLoRANotMergeable("there is no delta weight")

    def __repr__(self) -> str:
        return "p" + super().__repr__()


def apply_plora(model: nn.Module, *, target_names: list[str], image_token_id: int, r: int,
                alpha: int, dropout: float, modules_to_save: list[str] | None = None) -> PeftModel:
    """Wrap ``target_names`` (full module names of ``nn.Linear`` layers) with PLoRA.

    Only the PLoRA A/B weights (and copies of ``modules_to_save``, if given) are trainable.
    Use :func:`vlmtune.models.methods.llm_linear_names` for every linear layer of the LLM.
    """
    _check_hyperparameters(target_names=target_names, r=r, alpha=alpha, dropout=dropout)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none",
                        target_modules=list(target_names), modules_to_save=modules_to_save)
    config._register_custom_module({nn.Linear: PLoraLinear})
    peft_model = get_peft_model(model, config)
    attach_mask(peft_model, image_token_id)
    return peft_model


def save_plora(model: PeftModel, out_dir: Path) -> Path:
    """Write the adapter to ``out_dir`` (via a temporary directory renamed into place)."""
    layers = _plora_layers(model)
    if not isinstance(model, PeftModel) or not layers:
        raise ValueError("save_plora needs a model returned by apply_plora or load_plora")
    mask = layers[0].plora_mask
    if mask is None:
        raise ValueError("the PLoRA layers have no mask; was the model built by apply_plora?")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), selected_adapters=[model.active_adapter])
    adapter = tmp / _adapter_subdir(model)
    config_file = adapter / CONFIG_FILE
    config = json.loads(config_file.read_text())
    config["peft_type"] = PEFT_TYPE
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config["plora"] = {"format_version": FORMAT_VERSION, "image_token_id": mask.image_token_id}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    if adapter != tmp:  # a non-default adapter name: peft nests it one level down
        for item in adapter.iterdir():
            item.rename(tmp / item.name)
        adapter.rmdir()
    (tmp / "README.md").unlink(missing_ok=True)  # peft's model card template says nothing here
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    log.info("saved PLoRA adapter (%d layers) to %s", len(layers), out_dir)
    return out_dir


def load_plora(base_model: nn.Module, adapter_dir: Path, *, image_token_id: int | None = None,
               trainable: bool = False) -> PeftModel:
    """Load a :func:`save_plora` directory onto ``base_model``; eval mode unless ``trainable``."""
    adapter_dir = Path(adapter_dir)
    if not is_plora_adapter(adapter_dir):
        raise CheckpointError(f"{adapter_dir}: not a PLoRA adapter directory (no {CONFIG_FILE} "
                              f'with "peft_type": "{PEFT_TYPE}")')
    if not (adapter_dir / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{adapter_dir}: {WEIGHTS_FILE} is missing")
    fields = json.loads((adapter_dir / CONFIG_FILE).read_text())
    saved = fields.pop("plora", {})
    if saved.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{adapter_dir}: PLoRA format_version "
                              f"{saved.get('format_version')!r}; this vlmtune reads "
                              f"{FORMAT_VERSION}")
    token_id = image_token_id if image_token_id is not None else saved.get("image_token_id")
    if token_id is None:
        raise CheckpointError(f"{adapter_dir}: no image_token_id saved; pass image_token_id=")
    fields["peft_type"] = "LORA"
    config = LoraConfig.from_peft_type(**fields)
    config._register_custom_module({nn.Linear: PLoraLinear})
    model = PeftModel.from_pretrained(base_model, str(adapter_dir), config=config,
                                      is_trainable=trainable)
    attach_mask(model, int(token_id))
    return model if trainable else model.eval()


def is_plora_adapter(adapter_dir: Path) -> bool:
    config_file = Path(adapter_dir) / CONFIG_FILE
    if not config_file.is_file():
        return False
    try:
        return json.loads(config_file.read_text()).get("peft_type") == PEFT_TYPE
    except (json.JSONDecodeError, AttributeError):
        return False


def attach_mask(peft_model: PeftModel, image_token_id: int) -> VisualMask:
    """Hook a fresh :class:`VisualMask` onto the top-level model and share it with the layers.

    Replaces any mask attached before (its hooks are removed).
    """
    layers = _plora_layers(peft_model)
    if not layers:
        raise ValueError("the model has no PLoRA layers")
    top = peft_model.get_base_model()
    for layer in layers:
        if layer.plora_mask is not None:
            for handle in layer.plora_mask.hooks:
                handle.remove()
            layer.plora_mask.hooks.clear()
    state = VisualMask(int(image_token_id))

    def record(module: nn.Module, args: tuple, kwargs: dict) -> None:
        state.record(kwargs["input_ids"] if "input_ids" in kwargs else (args[0] if args else None))

    def clear(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        # A checkpointed backward re-runs the layers after this hook; they need the mask then.
        if not (torch.is_grad_enabled() and _checkpointing(module)):
            state.clear()

    state.hooks = [top.register_forward_pre_hook(record, with_kwargs=True),
                   top.register_forward_hook(clear, with_kwargs=True, always_call=True)]
    for layer in layers:
        layer.plora_mask = state
    return state


def _checkpointing(model: nn.Module) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x
    if flag is None:
        flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag)


def _plora_layers(model: nn.Module) -> list[PLoraLinear]:
    return [m for m in model.modules() if isinstance(m, PLoraLinear)]


def _adapter_subdir(model: PeftModel) -> str:
    name = model.active_adapter
    return "" if name == "default" else name


def _check_hyperparameters(*, target_names: list[str], r: int, alpha: int,
                           dropout: float) -> None:
    if not target_names:
        raise ConfigError("PLoRA target_names is empty: no linear layer to adapt")
    if r < 1:
        raise ConfigError(f"PLoRA r={r} must be a positive integer")
    if alpha <= 0:
        raise ConfigError(f"PLoRA alpha={alpha} must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"PLoRA dropout={dropout} must be in [0, 1)")

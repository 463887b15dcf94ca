"""Merge a LoRA adapter into its base, shard by shard, into a directory transformers loads.

Memory stays bounded by one base shard plus the adapter: each stored shard is read with
``safe_open``, the adapter's updates ``W += B·A·scale`` (rsLoRA: ``alpha/sqrt(r)``) are added
to the tensors it targets (on CUDA when available), ``modules_to_save`` weights replace
theirs, and the shard is written out before the next one is read; the index is rebuilt.
The result equals peft's ``merge_and_unload`` (the update is computed in float32 and cast to
the stored dtype).

QLoRA: the base on disk is not quantised (the 4-bit NF4 copy exists only in training memory),
so the update is merged into the base weights as stored, in their dtype.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from vlmtune.config.schema import ModelConfig
from vlmtune.convert.lora import Adapter, read_adapter
from vlmtune.convert.names import StoredNames
from vlmtune.convert.safety import staged_output
from vlmtune.convert.shards import ShardWriter, iter_shards, tensor_names
from vlmtune.errors import CheckpointError

log = logging.getLogger(__name__)

# Files of a model directory that are not weights: copied beside merged / converted weights.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf")
SKIPPED = {"model.safetensors.index.json", "pytorch_model.bin.index.json", "vlmtune_tiny.json"}


@dataclass
class MergeResult:
    out: Path
    shards: list[str]
    merged: int  # tensors that received a LoRA update
    replaced: int  # tensors replaced by modules_to_save


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def merge_to_dir(base_dir: Path, adapter_dir: Path, out: Path, cfg: ModelConfig) -> Path:
    """base + adapter → ``out`` (sharded safetensors, the base's tokenizer/processor files)."""
    with staged_output(out, force=True) as tmp:
        copy_side_files(base_dir, tmp)
        merge_weights(base_dir, read_adapter(adapter_dir), tmp)
        _write_family_processing(base_dir, tmp, cfg)
    log.info("merged %s into %s → %s", adapter_dir, base_dir, out)
    return out


def merge_checkpoint(base_dir: Path, adapter_dir: Path, out: Path, *,
                     max_shard_size: int | str = "2GB", device: str = "auto",
                     force: bool = False) -> MergeResult:
    """``vlmtune checkpoint merge``: base + adapter → ``out``, written via ``OUT.tmp``."""
    with staged_output(out, force=force) as tmp:
        copy_side_files(base_dir, tmp)
        result = merge_weights(base_dir, read_adapter(adapter_dir), tmp,
                               max_shard_size=max_shard_size, device=device)
    result.out = Path(out)
    return result


def merge_weights(base_dir: Path, adapter: Adapter, out_dir: Path, *,
                  max_shard_size: int | str = "2GB", device: str = "auto") -> MergeResult:
    """Stream ``base_dir``'s shards through the adapter into ``out_dir``'s shards."""
    patch = AdapterPatch(adapter, tensor_names(base_dir), device)
    writer = ShardWriter(out_dir, max_shard_size)
    for _file, tensors in iter_shards(base_dir):
        for name, tensor in tensors.items():
            writer.add(name, patch(name, tensor))
        writer.flush()  # never let an output shard span two input shards
        del tensors
    patch.finish()
    shards = writer.close()
    return MergeResult(Path(out_dir), shards, len(adapter.pairs), len(adapter.replaced))


class AdapterPatch:
    """``(stored name, tensor) → tensor``: the adapter's update applied where it targets."""

    def __init__(self, adapter: Adapter, stored: Iterable[str], device: str = "auto") -> None:
        names = StoredNames(stored)
        self.device = resolve_device(device)
        self.pairs = {names.resolve(k): v for k, v in adapter.pairs.items()}
        self.replaced = {names.resolve(k): v for k, v in adapter.replaced.items()}

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if name in self.replaced:
            new = self.replaced.pop(name)
            if tuple(new.shape) != tuple(tensor.shape):
                raise CheckpointError(f"replacement for {name!r} has shape {tuple(new.shape)}, "
                                      f"the base {tuple(tensor.shape)}")
            return new.to(tensor.dtype)
        if name in self.pairs:
            return apply_delta(tensor, self.pairs.pop(name).delta(self.device))
        return tensor

    def finish(self) -> None:
        """Every adapter tensor must have found its base weight."""
        if self.pairs or self.replaced:
            raise CheckpointError(f"adapter tensors found no base weight: "
                                  f"{sorted(self.pairs)[:3]}{sorted(self.replaced)[:3]}")


def apply_delta(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    if tuple(delta.shape) != tuple(weight.shape):
        raise CheckpointError(f"LoRA update of shape {tuple(delta.shape)} does not fit a base "
                              f"weight of shape {tuple(weight.shape)}")
    merged = weight.to(device=delta.device, dtype=torch.float32) + delta
    return merged.to(dtype=weight.dtype, device="cpu")


def copy_side_files(src: Path, dst: Path) -> None:
    """Copy everything but the weights (config, tokenizer, processor, remote code …)."""
    for path in Path(src).iterdir():
        if path.name in SKIPPED or path.name.endswith(WEIGHT_SUFFIXES):
            continue
        if path.is_dir():
            shutil.copytree(path, dst / path.name)
        else:
            shutil.copy2(path, dst / path.name)


def _write_family_processing(base_dir: Path, out: Path, cfg: ModelConfig) -> None:
    """The family's processor files (e.g. InternVL's processor_config.json), from the config."""
    from transformers import AutoConfig

    from vlmtune.models.families import get_family

    family = get_family(cfg.family)
    config_only = _ConfigOnly(AutoConfig.from_pretrained(base_dir))
    family.save_processing(family.image_pipeline(config_only, base_dir, cfg), out)


class _ConfigOnly(SimpleNamespace):
    """Stands in for a model where an image pipeline needs only ``model.config``: the hooks
    some pipelines install for training and generation have nothing to attach to."""

    def __init__(self, config) -> None:
        super().__init__(config=config, _vlmtune_token_types=True, _vlmtune_text_only=True)

    def register_forward_pre_hook(self, *args, **kwargs) -> None:
        return None

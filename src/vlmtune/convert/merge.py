"""Merge a LoRA adapter into its base, shard by shard, into a directory transformers loads.

Memory stays bounded by one base shard plus the adapter (in fact by one tensor plus the
adapter): the output files are planned from the stored headers, and each stored tensor is read,
given the adapter's update ``W += B·A·scale`` (rsLoRA: ``alpha/sqrt(r)``) in place when the
adapter targets it (the update computed on CUDA when available), or replaced by its
``modules_to_save`` copy, and written before the next is read; the index is rebuilt.
The result equals peft's ``merge_and_unload`` (the update is computed in float32 and cast to
the stored dtype).

QLoRA: the base on disk is not quantised (the 4-bit NF4 copy exists only in training memory),
so the update is merged into the base weights as stored, in their dtype.
"""

from __future__ import annotations

import json
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
from vlmtune.convert.shards import INDEX, SINGLE, parse_size, weight_files
from vlmtune.convert.stream import plan_shards, read_entries, read_tensor, write_planned
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
    from vlmtune.convert.cache import is_official_dir

    if is_official_dir(base_dir):
        raise CheckpointError(f"{base_dir} is an official InternVL checkpoint; a peft adapter "
                              "names the transformers-native layout: convert the base first "
                              f"with `vlmtune checkpoint to-hf {base_dir} OUT` and merge into OUT")
    with staged_output(out, force=force) as tmp:
        copy_side_files(base_dir, tmp)
        result = merge_weights(base_dir, read_adapter(adapter_dir), tmp,
                               max_shard_size=max_shard_size, device=device)
    result.out = Path(out)
    return result


def merge_weights(base_dir: Path, adapter: Adapter, out_dir: Path, *,
                  max_shard_size: int | str = "2GB", device: str = "auto") -> MergeResult:
    """Stream ``base_dir``'s tensors through the adapter into ``out_dir``, one at a time.

    Output files are planned from the input headers (at most ``max_shard_size`` each, never
    spanning two input shards), so each tensor is read, updated in place and written before
    the next is read; the index is rebuilt.
    """
    per_file = [(file, read_entries(file)) for file in weight_files(base_dir)]
    patch = AdapterPatch(adapter, [e.name for _, entries in per_file for e in entries], device)
    limit = parse_size(max_shard_size)
    groups = [(file, group) for file, entries in per_file
              for group in plan_shards(entries, limit)]
    names, weight_map, total = [], {}, 0
    for i, (file, group) in enumerate(groups):
        final = SINGLE if len(groups) == 1 else \
            f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        with open(file, "rb") as handle:
            write_planned(out_dir / final, group,
                          lambda entry, h=handle: patch(entry.name, read_tensor(h, entry)))
        names.append(final)
        weight_map.update({entry.name: final for entry in group})
        total += sum(entry.nbytes for entry in group)
    patch.finish()
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return MergeResult(Path(out_dir), names, len(adapter.pairs), len(adapter.replaced))


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
    """``weight + delta`` (float32 arithmetic), written into ``weight`` in place."""
    if tuple(delta.shape) != tuple(weight.shape):
        raise CheckpointError(f"LoRA update of shape {tuple(delta.shape)} does not fit a base "
                              f"weight of shape {tuple(weight.shape)}")
    if weight.dtype == torch.float32 and delta.device == weight.device:
        return weight.add_(delta)
    merged = weight.to(device=delta.device, dtype=torch.float32) + delta
    return weight.copy_(merged.to(dtype=weight.dtype).cpu())


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

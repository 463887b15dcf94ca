"""Whole directories: official InternVL2/2.5 ↔ transformers-native, streamed shard by shard.

``to_native`` writes weights, ``config.json``, the converted fast tokenizer, the image
processor (tiling on, ``max_patches`` = the source's ``max_dynamic_patch``, tiles of
``force_image_size``), ``processor_config.json`` and the source's ``generation_config.json``.
``to_official`` is the inverse for a model tuned from the official checkpoint ``like``: the
weights re-fused and renamed, ``like``'s config as the template, and ``like``'s remote-code
``.py`` files, tokenizer files and ``generation_config.json`` beside them (what LMDeploy needs).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Protocol

import torch

from vlmtune.convert.merge import copy_side_files
from vlmtune.convert.official_config import (
    is_official,
    native_config,
    official_config,
    tile_size,
    tokens_per_tile,
)
from vlmtune.convert.official_weights import Layout, OfficialNamer, to_native
from vlmtune.convert.safety import staged_output
from vlmtune.convert.shards import ShardWriter, iter_shards, tensor_names
from vlmtune.convert.tokenizer import convert_tokenizer
from vlmtune.errors import CheckpointError

log = logging.getLogger(__name__)


class Patch(Protocol):
    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor: ...

    def finish(self) -> None: ...


IMG_CONTEXT = "<IMG_CONTEXT>"
SOURCE_RECORD = "vlmtune_source.json"


def read_config(model_dir: Path) -> dict:
    file = Path(model_dir) / "config.json"
    if not file.exists():
        raise CheckpointError(f"{model_dir} has no config.json; is it a model directory?")
    return json.loads(file.read_text())


def require_official(model_dir: Path) -> dict:
    config = read_config(model_dir)
    if not is_official(config):
        raise CheckpointError(f"{model_dir} is not an official InternVL checkpoint "
                              "(InternVLChatModel); `vlmtune checkpoint inspect` says what it is")
    return config


def to_native_dir(src: Path, out: Path, *, force: bool = False,
                  max_shard_size: int | str = "2GB", patch: Patch | None = None) -> Path:
    """``vlmtune checkpoint to-hf``: official ``src`` → transformers-native ``out``.

    ``patch`` (e.g. a merged xtuner LoRA) rewrites official tensors before they are renamed.
    """
    src, out = Path(src), Path(out)
    config = require_official(src)
    with staged_output(out, force=force) as tmp:
        tokenizer = convert_tokenizer(src, tmp, template_name=config.get("template"))
        image_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise CheckpointError(f"{src}: the tokenizer has no {IMG_CONTEXT} token")
        write_native_weights(src, tmp, Layout.from_official_config(config), max_shard_size,
                             patch)
        native = native_config(config, image_token_id)
        (tmp / "config.json").write_text(json.dumps(native, indent=2) + "\n")
        _write_processing(config, tmp)
        if (src / "generation_config.json").exists():
            shutil.copy2(src / "generation_config.json", tmp / "generation_config.json")
        record = {"layout": "official", "source": str(src.resolve()),
                  "template": config.get("template"), "llm": native["text_config"]["model_type"]}
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    log.info("converted the official checkpoint %s → %s (transformers-native)", src, out)
    return out


def write_native_weights(src: Path, out_dir: Path, layout: Layout,
                         max_shard_size: int | str = "2GB", patch: Patch | None = None
                         ) -> list[str]:
    writer = ShardWriter(out_dir, max_shard_size)
    embedding, has_head = None, False
    for _file, tensors in iter_shards(src):
        for name, tensor in tensors:
            if patch is not None:
                tensor = patch(name, tensor)
            for new, value in to_native(name, tensor, layout):
                has_head |= new == "lm_head.weight"
                if new == "model.language_model.embed_tokens.weight":
                    embedding = value
                writer.add(new, value)
        writer.flush()
    if not has_head:  # a tied head: write it out, the native config is untied
        if embedding is None:
            raise CheckpointError(f"{src} has neither an output head nor token embeddings")
        writer.add("lm_head.weight", embedding.clone())
    if patch is not None:
        patch.finish()
    return writer.close()


def _write_processing(config: dict, out: Path) -> None:
    from vlmtune.data.images import build_image_processor

    dynamic = config.get("dynamic_image_size", True)
    max_tiles = int(config.get("max_dynamic_patch", 12)) if dynamic else 1
    min_tiles = min(int(config.get("min_dynamic_patch", 1)), max_tiles)
    processor = build_image_processor(tile_size=tile_size(config), max_tiles=max_tiles,
                                      min_tiles=min_tiles)
    processor.save_pretrained(out)
    processor_config = {"processor_class": "InternVLProcessor",
                        "image_seq_length": tokens_per_tile(config)}
    (out / "processor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")


def to_official_dir(src: Path, out: Path, *, like: Path, force: bool = False,
                    max_shard_size: int | str = "2GB") -> Path:
    """``vlmtune checkpoint to-official``: native ``src`` tuned from official ``like`` → ``out``."""
    src, out, like = Path(src), Path(out), Path(like)
    base = require_official(like)
    native = read_config(src)
    if native.get("model_type") != "internvl":
        raise CheckpointError(f"{src} is not a transformers-native InternVL "
                              f"(model_type={native.get('model_type')!r})")
    with staged_output(out, force=force) as tmp:
        copy_side_files(like, tmp)  # remote code, tokenizer, generation config
        (tmp / "config.json").write_text(
            json.dumps(official_config(native, base), indent=2, ensure_ascii=False) + "\n")
        write_official_weights(src, tmp, Layout.from_official_config(base),
                               keep=set(tensor_names(like)), max_shard_size=max_shard_size)
    log.info("wrote %s in the official layout of %s → %s", src, like, out)
    return out


def write_official_weights(src: Path, out_dir: Path, layout: Layout, *, keep: set[str],
                           max_shard_size: int | str = "2GB") -> list[str]:
    """Native shards → official shards; tensors the base does not store (a tied head) drop."""
    writer, namer = ShardWriter(out_dir, max_shard_size), OfficialNamer(layout)
    for _file, tensors in iter_shards(src):
        for name, tensor in tensors:
            for new, value in namer.feed(name, tensor):
                if new in keep:
                    writer.add(new, value)
                elif not new.endswith(("lm_head.weight", "output.weight")):
                    raise CheckpointError(f"{src}: tensor {name!r} ({new}) is not in the base")
        writer.flush()
    namer.finish()
    return writer.close()


def patched_official_dir(base: Path, out: Path, patch: Patch, *, force: bool = False,
                         max_shard_size: int | str = "2GB") -> Path:
    """The official ``base`` with ``patch`` applied to its tensors, in the official layout."""
    base, out = Path(base), Path(out)
    require_official(base)
    with staged_output(out, force=force) as tmp:
        copy_side_files(base, tmp)
        writer = ShardWriter(tmp, max_shard_size)
        for _file, tensors in iter_shards(base):
            for name, tensor in tensors:
                writer.add(name, patch(name, tensor))
            writer.flush()
        patch.finish()
        writer.close()
    return out

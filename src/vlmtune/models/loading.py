"""Load a model directory (a real checkpoint or the tiny one) with its tokenizer and images.

The tiny model is built into its directory on first use, then loaded by exactly the code that
loads a real InternVL2 checkpoint from a local path.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from vlmtune.config.schema import ModelConfig
from vlmtune.data import synthetic
from vlmtune.data.templates import get_template
from vlmtune.data.vision import ImagePipeline
from vlmtune.errors import ConfigError
from vlmtune.models.families import Family, get_family
from vlmtune.models.tokenizer import train_tokenizer

log = logging.getLogger(__name__)

TINY_MARKER = "vlmtune_tiny.json"
TINY_BUILDER_VERSION = 3  # bump when build_tiny_* changes, so cached tiny models are rebuilt
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model with everything needed to feed it."""

    model: Any
    tokenizer: Any
    images: ImagePipeline
    family: Family
    path: Path
    image_token_id: int


def ensure_model_dir(cfg: ModelConfig) -> Path:
    """Return ``model.path``; with ``model.build=tiny`` build it there first if needed."""
    path = Path(cfg.path)
    if cfg.build == "tiny":
        wanted = {"seed": cfg.seed, "max_tiles": cfg.max_tiles, "spec": asdict(cfg.tiny),
                  "corpus": synthetic.GENERATOR_VERSION, "builder": TINY_BUILDER_VERSION}
        marker = path / TINY_MARKER
        if not (marker.exists() and json.loads(marker.read_text()) == wanted):
            _build_tiny(path, cfg, wanted)
    elif not path.is_dir():
        raise ConfigError(f"model.path={cfg.path!r} does not exist or is not a directory; "
                          "point it at a local model directory (nothing is downloaded)")
    return path


def load_model(path: Path, cfg: ModelConfig, *, nf4: bool = False) -> LoadedModel:
    """Load ``path`` (an HF ``save_pretrained`` directory) as ``cfg.family`` says.

    ``nf4``: the LLM's linear layers in 4-bit NF4 (QLoRA; bitsandbytes on CUDA), the vision
    tower, projector and LM head kept in ``model.dtype``.
    """
    family = get_family(cfg.family)
    _refuse_unsupported_layout(path)
    extra = {"quantization_config": _nf4_config(family, cfg)} if nf4 else {}
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[cfg.dtype], **extra)
    tokenizer = AutoTokenizer.from_pretrained(path)
    images = family.image_pipeline(model, path, cfg)
    image_token_id = tokenizer.convert_tokens_to_ids(images.image_token)
    expected = getattr(model.config, "image_token_id", None)
    if expected is None:
        expected = getattr(model.config, "image_token_index", None)
    if expected is not None and image_token_id != expected:
        raise ConfigError(f"model.path={str(path)!r}: the tokenizer's {images.image_token} id "
                          f"{image_token_id} does not match the model's image token id {expected}")
    return LoadedModel(model.eval(), tokenizer, images, family, path, image_token_id)


def _nf4_config(family: Family, cfg: ModelConfig):
    from transformers import BitsAndBytesConfig

    compute = DTYPES[cfg.dtype] if cfg.dtype != "float32" else torch.bfloat16
    skip = [m.rsplit(".", 1)[-1] for m in (family.vision, family.projector, family.lm_head)]
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute,
                              llm_int8_skip_modules=skip)


def _build_tiny(path: Path, cfg: ModelConfig, wanted: dict) -> None:
    log.info("building the tiny %s model into %s", cfg.family, path)
    template = get_template(cfg.chat_template)
    corpus = synthetic.text_corpus() + [template.system or ""]
    family = get_family(cfg.family)
    tokenizer = train_tokenizer(corpus, vocab_size=cfg.tiny.vocab_size,
                                image_tokens=family.special_tokens, template=template)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    family.build_tiny(tmp, cfg, tokenizer)
    (tmp / TINY_MARKER).write_text(json.dumps(wanted, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def _refuse_unsupported_layout(path: Path) -> None:
    config_file = path / "config.json"
    if not config_file.exists():
        raise ConfigError(f"model.path={str(path)!r} has no config.json; is it a model "
                          "directory saved with save_pretrained?")
    config = json.loads(config_file.read_text())
    if "llm_config" in config or "InternVLChatModel" in config.get("architectures", []):
        raise ConfigError(
            f"model.path={str(path)!r} is an InternVL2 checkpoint in the official "
            "(InternVLChatModel / InternLM2) layout; vlmtune trains the HF-native layout "
            "(InternVLForConditionalGeneration). Use an '-hf' copy of the checkpoint; the "
            "official → HF-native converter is planned as `vlmtune convert`.")

"""Load a model directory (a real checkpoint or the tiny one) with its tokenizer and images.

The tiny model is built into its directory on first use, then loaded by exactly the code that
loads a real InternVL2 checkpoint from a local path.
"""

from __future__ import annotations

import json
import logging
import os
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
TINY_BUILDER_VERSION = 4  # bump when build_tiny_* changes, so cached tiny models are rebuilt
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


BUILD_MODES = ("auto", "tiny", "none")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")


def ensure_model_dir(cfg: ModelConfig, cache_dir: str | Path | None = None) -> Path:
    """Return ``model.path``, building vlmtune's tiny model there first when it should.

    ``model.build``: ``auto`` (default) builds only into vlmtune's own directories, i.e. a
    path carrying :data:`TINY_MARKER`, or an absent / empty path inside ``<cache_dir>/models``;
    ``tiny`` also builds into any absent or empty path; ``none`` never builds. A directory
    holding anything else is the user's checkpoint: it is checked and used, never modified.
    ``cache_dir``: the recipe's ``cache_dir`` (default: the one the recipe gave ``cfg``).
    """
    path = Path(cfg.path).expanduser()
    mode = cfg.build or "none"
    if cache_dir is None:
        cache_dir = getattr(cfg, "cache_dir", None)
    if mode != "none" and _is_ours(path, mode, cache_dir):
        wanted = {"seed": cfg.seed, "max_tiles": cfg.max_tiles, "spec": asdict(cfg.tiny),
                  "corpus": synthetic.GENERATOR_VERSION, "builder": TINY_BUILDER_VERSION}
        marker = path / TINY_MARKER
        if not (marker.exists() and json.loads(marker.read_text()) == wanted):
            _build_tiny(path, cfg, wanted)
        return path
    from vlmtune.convert.cache import native_model_dir

    path = native_model_dir(path, cache_dir)  # an official InternVL → its cached native copy
    check_model_dir(path)
    return path


def builds_here(cfg: ModelConfig, cache_dir: str | Path | None = None) -> bool:
    """Whether :func:`ensure_model_dir` would build vlmtune's tiny model at ``model.path``."""
    if cache_dir is None:
        cache_dir = getattr(cfg, "cache_dir", None)
    try:
        return (cfg.build or "none") != "none" and _is_ours(Path(cfg.path).expanduser(),
                                                            cfg.build, cache_dir)
    except ConfigError:
        return False


def is_tiny_dir(path: Path) -> bool:
    """Whether ``path`` is a directory vlmtune built (it carries the tiny marker)."""
    return (Path(path) / TINY_MARKER).is_file()


def check_model_dir(path: Path) -> None:
    """ConfigError naming ``model.path`` unless ``path`` holds a loadable checkpoint:
    ``config.json``, weights and tokenizer files, in a layout vlmtune trains."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"model.path={str(path)!r} does not exist or is not a directory; "
                          "point it at a local model directory (nothing is downloaded)")
    _refuse_unsupported_layout(path)
    names = {p.name for p in path.iterdir()}
    missing = []
    if not (names & set(WEIGHT_FILES) or any(n.endswith(".safetensors") for n in names)):
        missing.append("weights (" + " / ".join(WEIGHT_FILES[:3]) + ")")
    if not (names & set(TOKENIZER_FILES) or any(n.endswith(".tiktoken") for n in names)):
        missing.append("tokenizer files (" + " / ".join(TOKENIZER_FILES[:2]) + ")")
    if missing:
        raise ConfigError(f"model.path={str(path)!r} has config.json but lacks "
                          f"{' and '.join(missing)}; it must be a complete model directory "
                          "(save_pretrained of the model and of its tokenizer)")


def _is_ours(path: Path, mode: str, cache_dir: str | Path | None) -> bool:
    """Whether vlmtune may build (or rebuild) its tiny model at ``path``."""
    if is_tiny_dir(path):
        return True
    vacant = not path.exists() or (path.is_dir() and not any(path.iterdir()))
    if mode == "tiny":
        if not vacant:
            raise ConfigError(
                f"model.build=tiny would replace model.path={str(path)!r}, which holds files "
                "vlmtune did not build; point model.path at an empty or new directory, or set "
                "model.build=none to use that directory as the checkpoint")
        return True
    return vacant and cache_dir is not None and _inside(path, Path(cache_dir) / "models")


def _inside(path: Path, folder: Path) -> bool:
    return path.absolute().resolve().is_relative_to(folder.absolute().resolve())


def load_model(path: Path, cfg: ModelConfig, *, nf4: bool = False,
               device: str | None = None) -> LoadedModel:
    """Load ``path`` (an HF ``save_pretrained`` directory) as ``cfg.family`` says.

    ``nf4``: the LLM's linear layers in 4-bit NF4 (QLoRA; bitsandbytes on CUDA), the vision
    tower, projector and LM head kept in ``model.dtype``. ``device``: move the model there
    (None: stay on the CPU; training leaves the move to its engine).
    """
    family = get_family(cfg.family)
    check_model_dir(path)
    extra = {"quantization_config": _nf4_config(family, cfg)} if nf4 else {}
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[cfg.dtype], **extra)
    if device is not None:
        model = model.to(device)
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
    tmp = path.with_name(f".{path.name}.vlmtune-build-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    family.build_tiny(tmp, cfg, tokenizer)
    (tmp / TINY_MARKER).write_text(json.dumps(wanted, indent=2))
    if is_tiny_dir(path):  # an older tiny build of ours
        shutil.rmtree(path)
    elif path.is_dir():
        path.rmdir()  # empty (anything else was refused); fails rather than delete files
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
            "(InternVLForConditionalGeneration). The pipeline converts it into its cache "
            f"itself; to convert it by hand: vlmtune checkpoint to-hf {path} OUT")

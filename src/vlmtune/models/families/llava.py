"""LLaVA-1.5 in transformers' native layout (``LlavaForConditionalGeneration``).

CLIP ViT (features of the second-to-last layer, CLS dropped) → two-layer MLP projector → the
LLM, whose ``<image>`` positions receive one feature per ViT patch. Each image is padded to a
square with the mean colour (expand2square), then resized to the ViT's input size.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from vlmtune.config.schema import ModelConfig, TinyModelSpec
from vlmtune.data.images import PROCESSOR_CONFIG
from vlmtune.data.vision import EncodedImages, concat_collate
from vlmtune.errors import CheckpointError
from vlmtune.models.families.base import Family
from vlmtune.models.families.internvl import finish_tiny, tiny_text_config

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
EOS = "</s>"  # vicuna's end of reply; the tiny tokenizer has it as one special token


class ProcessorImages:
    """Images through an HF processor: ``<image>`` × the number of features it says each has.

    The count comes from the processor's own prompt expansion, so it follows the checkpoint's
    patch size, feature-select strategy and (LLaVA-NeXT) grid pinpoints.
    """

    image_token = IMAGE_TOKEN
    block_tokens = (IMAGE_TOKEN,)

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.image_token_id = processor.image_token_id
        self.input_names = list(processor.image_processor.model_input_names)

    def encode(self, images: list[Image.Image]) -> EncodedImages:
        parts, blocks, total = [], [], 0
        for image in images:
            out = self.processor(images=[image.convert("RGB")], text=[IMAGE_TOKEN],
                                 return_tensors="pt")
            n = int((out["input_ids"] == self.image_token_id).sum())
            parts.append({key: out[key] for key in self.input_names})
            blocks.append(IMAGE_TOKEN * n)
            total += n
        tensors = self.collate(parts) if parts else {}
        return EncodedImages(tensors, blocks, total, {"images": len(images)})

    def collate(self, parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return concat_collate(parts)


def image_pipeline(model: Any, model_dir: Path, cfg: ModelConfig) -> ProcessorImages:
    image_processor = LlavaImageProcessorPil.from_pretrained(str(processor_dir(model_dir)))
    if not image_processor.do_pad:  # llava-hf exports centre-crop; LLaVA-1.5 trained padded
        log.info("%s: padding images to squares (expand2square), as LLaVA-1.5 does", model_dir)
        image_processor.do_pad = True
    return ProcessorImages(LlavaProcessor(image_processor, AutoTokenizer.from_pretrained(model_dir),
                                          **processor_args(model.config)))


def processor_args(config: Any) -> dict[str, Any]:
    """The processor settings that decide the number of ``<image>`` tokens, from the model."""
    vision = config.vision_config
    patch = vision.patch_size
    return {
        "patch_size": int(patch[0] if isinstance(patch, list | tuple) else patch),
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
        # CLIP puts a CLS token before the patches ("default" strategy drops it again).
        "num_additional_image_tokens": 1 if vision.model_type == "clip_vision_model" else 0,
        "image_token": IMAGE_TOKEN,
    }


def build_tiny(out_dir: Path, cfg: ModelConfig, tokenizer: Any) -> None:
    """Write a randomly initialised tiny LLaVA-1.5 (model, tokenizer, image processor)."""
    spec = cfg.tiny
    torch.manual_seed(cfg.seed)
    tokenizer.eos_token = EOS
    config = LlavaConfig(
        vision_config=tiny_vision_config(spec),
        text_config=tiny_text_config(cfg, tokenizer, model_type="llama"),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(spec.tile_size // spec.patch_size) ** 2,
    )
    model = LlavaForConditionalGeneration(config).eval()
    finish_tiny(model, cfg, tokenizer, out_dir)
    build_image_processor(spec.tile_size).save_pretrained(out_dir)
    write_processor_config(out_dir, "LlavaProcessor", processor_args(config))


def tiny_vision_config(spec: TinyModelSpec) -> dict:
    """A tiny CLIP vision tower on ``tile_size`` square inputs."""
    return {
        "model_type": "clip_vision_model",
        "hidden_size": spec.vision_hidden,
        "intermediate_size": spec.vision_hidden * 2,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.tile_size,
        "patch_size": spec.patch_size,
        "projection_dim": spec.vision_hidden,
    }


def build_image_processor(size: int) -> LlavaImageProcessorPil:
    """Pad to a square with the mean colour, resize to ``size``² (CLIP normalisation)."""
    return LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": size},
                                  crop_size={"height": size, "width": size})


def save_processing(images: ProcessorImages, out: Path) -> None:
    """The image processor, and the processor config ``AutoProcessor`` reads."""
    processor = images.processor
    processor.image_processor.save_pretrained(out)
    args = {key: value for key, value in processor.to_dict().items()
            if key not in ("image_processor", "tokenizer", "processor_class")}
    write_processor_config(out, type(processor).__name__, args)


def write_processor_config(out: Path, processor_class: str, args: dict[str, Any]) -> None:
    config = {"processor_class": processor_class, **args}
    (Path(out) / "processor_config.json").write_text(json.dumps(config, indent=2) + "\n")


def processor_dir(model_dir: Path) -> Path:
    if not (Path(model_dir) / PROCESSOR_CONFIG).is_file():
        raise CheckpointError(f"{model_dir}: no {PROCESSOR_CONFIG}; was the processor saved?")
    return Path(model_dir)


LLAVA = Family(
    name="llava",
    llm="model.language_model",
    projector="model.multi_modal_projector",
    vision="model.vision_tower",
    lm_head="lm_head",
    chat_template="vicuna_v1",
    special_tokens=(EOS, IMAGE_TOKEN),
    image_pipeline=image_pipeline,
    build_tiny=build_tiny,
    save_processing=save_processing,
)

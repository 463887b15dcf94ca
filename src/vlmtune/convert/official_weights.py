"""Tensor names and shapes: official InternVL2 (``InternVLChatModel``) ↔ transformers-native.

Official → native renames every tensor (InternViT ``vision_model.*``, the ``mlp1`` projector,
an InternLM2 / Qwen2 / Llama ``language_model.*``), splits InternViT's fused ``attn.qkv`` into
rows [0:C], [C:2C], [2C:3C] and de-interleaves InternLM2's ``attention.wqkv``. Native →
official is the exact inverse; it fuses q/k/v again once all three of a layer have been seen
(they may sit in different shards), so it buffers only those.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from vlmtune.convert.internlm2 import fuse_wqkv, split_wqkv
from vlmtune.errors import CheckpointError

LLM_TYPES = {"InternLM2ForCausalLM": "internlm2", "Qwen2ForCausalLM": "qwen2",
             "LlamaForCausalLM": "llama"}
_VISION = [  # (official fragment, native fragment), applied in order under vision_model.
    ("embeddings.class_embedding", "embeddings.cls_token"),
    ("embeddings.position_embedding", "embeddings.position_embeddings"),
    ("embeddings.patch_embedding.", "embeddings.patch_embeddings.projection."),
    ("encoder.layers.", "encoder.layer."),
    (".norm1.", ".layernorm_before."), (".norm2.", ".layernorm_after."),
    (".ls1", ".lambda_1"), (".ls2", ".lambda_2"),
    (".attn.proj.", ".attention.projection_layer."),
    (".attn.q_norm.", ".attention.q_norm."), (".attn.k_norm.", ".attention.k_norm."),
]
_INTERNLM2 = [  # under language_model.model. → model.language_model.
    ("tok_embeddings.", "embed_tokens."),
    (".attention_norm.", ".input_layernorm."), (".ffn_norm.", ".post_attention_layernorm."),
    (".attention.wo.", ".self_attn.o_proj."),
    (".feed_forward.w1.", ".mlp.gate_proj."), (".feed_forward.w3.", ".mlp.up_proj."),
    (".feed_forward.w2.", ".mlp.down_proj."),
]
_PROJECTOR = [("mlp1.0.", "model.multi_modal_projector.layer_norm."),
              ("mlp1.1.", "model.multi_modal_projector.linear_1."),
              ("mlp1.3.", "model.multi_modal_projector.linear_2.")]
_VISION_QKV = re.compile(r"^model\.vision_tower\.encoder\.layer\.(\d+)\.attention\.([qkv])_proj"
                         r"\.(weight|bias)$")
_LLM_QKV = re.compile(r"^model\.language_model\.layers\.(\d+)\.self_attn\.([qkv])_proj"
                      r"\.(weight|bias)$")


@dataclass(frozen=True)
class Layout:
    """What the renames need to know about an official checkpoint."""

    llm: str  # internlm2 | qwen2 | llama
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_official_config(cls, config: dict) -> Layout:
        llm = config.get("llm_config") or {}
        arch = (llm.get("architectures") or ["?"])[0]
        if arch not in LLM_TYPES:
            raise CheckpointError(f"llm_config.architectures={arch!r} is not supported; "
                                  f"one of: {', '.join(LLM_TYPES)}")
        heads = int(llm["num_attention_heads"])
        return cls(LLM_TYPES[arch], heads, int(llm.get("num_key_value_heads", heads)),
                   int(llm.get("head_dim") or llm["hidden_size"] // heads))


def _swap(name: str, table: list[tuple[str, str]], reverse: bool) -> str:
    for official, native in (reversed(table) if reverse else table):
        src, dst = (native, official) if reverse else (official, native)
        name = name.replace(src, dst)
    return name


def to_native(name: str, tensor: torch.Tensor, layout: Layout
              ) -> list[tuple[str, torch.Tensor]]:
    """One official tensor → its native tensor(s)."""
    if name.startswith("vision_model."):
        new = "model.vision_tower." + _swap(name.removeprefix("vision_model."), _VISION, False)
        fused = re.fullmatch(r"(.*)\.attn\.qkv\.(weight|bias)", new)
        if fused:
            parts = tensor.chunk(3, dim=0)
            return [(f"{fused.group(1)}.attention.{p}_proj.{fused.group(2)}", t.contiguous())
                    for p, t in zip("qkv", parts, strict=True)]
        return [(new, tensor)]
    if name.startswith("mlp1."):
        return [(_swap(name, _PROJECTOR, False), tensor)]
    if layout.llm == "internlm2":
        if name.startswith("language_model.output."):
            return [("lm_head." + name.removeprefix("language_model.output."), tensor)]
        body = name.removeprefix("language_model.model.")
        new = "model.language_model." + _swap(body, _INTERNLM2, False)
        fused = re.fullmatch(r"(.*)\.attention\.wqkv\.(weight|bias)", new)
        if fused:
            parts = split_wqkv(tensor, layout.heads, layout.kv_heads, layout.head_dim)
            return [(f"{fused.group(1)}.self_attn.{p}_proj.{fused.group(2)}", t)
                    for p, t in zip("qkv", parts, strict=True)]
        return [(new, tensor)]
    if name.startswith("language_model.lm_head."):
        return [("lm_head." + name.removeprefix("language_model.lm_head."), tensor)]
    if name.startswith("language_model.model."):
        return [("model.language_model." + name.removeprefix("language_model.model."), tensor)]
    raise CheckpointError(f"official tensor {name!r} has no transformers-native name")


_LEGACY = [("language_model.lm_head.", "lm_head."),
           ("language_model.model.", "model.language_model."),
           ("language_model.", "model.language_model."),
           ("vision_tower.", "model.vision_tower."),
           ("multi_modal_projector.", "model.multi_modal_projector.")]


def loaded_name(name: str) -> str:
    """A native tensor name as the loaded model has it; ``save_pretrained`` in transformers 5
    stores InternVL under the legacy ``language_model.model.…`` / ``vision_tower.…`` names."""
    for legacy, loaded in _LEGACY:
        if name.startswith(legacy):
            return loaded + name.removeprefix(legacy)
    return name


class OfficialNamer:
    """Native tensors → official ones; q/k/v are held back until their layer is complete."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.pending: dict[tuple[str, str, str], dict[str, torch.Tensor]] = {}

    def feed(self, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        name = loaded_name(name)
        for pattern, kind in ((_VISION_QKV, "vision"), (_LLM_QKV, "llm")):
            match = pattern.match(name)
            if match and not (kind == "llm" and self.layout.llm != "internlm2"):
                key = (kind, match.group(1), match.group(3))
                parts = self.pending.setdefault(key, {})
                parts[match.group(2)] = tensor
                if len(parts) == 3:
                    del self.pending[key]
                    yield self._fused(key, parts)
                return
        yield self._renamed(name), tensor

    def finish(self) -> None:
        if self.pending:
            raise CheckpointError(f"incomplete q/k/v projections: {sorted(self.pending)[:3]}")

    def _fused(self, key: tuple[str, str, str], parts: dict[str, torch.Tensor]
               ) -> tuple[str, torch.Tensor]:
        kind, layer, what = key
        if kind == "vision":
            fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
            return f"vision_model.encoder.layers.{layer}.attn.qkv.{what}", fused
        lay = self.layout
        fused = fuse_wqkv(parts["q"], parts["k"], parts["v"], lay.heads, lay.kv_heads,
                          lay.head_dim)
        return f"language_model.model.layers.{layer}.attention.wqkv.{what}", fused

    def _renamed(self, name: str) -> str:
        if name.startswith("model.vision_tower."):
            return "vision_model." + _swap(name.removeprefix("model.vision_tower."), _VISION,
                                           True)
        if name.startswith("model.multi_modal_projector."):
            return _swap(name, _PROJECTOR, True)
        if name.startswith("lm_head."):
            head = "output." if self.layout.llm == "internlm2" else "lm_head."
            return "language_model." + head + name.removeprefix("lm_head.")
        if name.startswith("model.language_model."):
            body = name.removeprefix("model.language_model.")
            if self.layout.llm == "internlm2":
                body = _swap(body, _INTERNLM2, True)
            return "language_model.model." + body
        raise CheckpointError(f"native tensor {name!r} has no official InternVL name")

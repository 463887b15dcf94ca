"""``InternVLChatConfig`` (official config.json) → ``InternVLConfig`` (transformers-native).

Traps handled: ``tie_word_embeddings`` is set False explicitly (transformers 5 defaults to
True); ``rope_scaling`` + ``rope_theta`` become ``rope_parameters``; flash-attention settings
are not carried over; ``select_layer`` becomes ``vision_feature_layer``; ``image_seq_length``
is the tokens per tile after pixel shuffle; only ``ps_version v2`` (the native shuffle) is
accepted.
"""

from __future__ import annotations

from typing import Any

from vlmtune.convert.official_weights import Layout
from vlmtune.errors import CheckpointError

_TEXT_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "rms_norm_eps", "vocab_size",
              "max_position_embeddings", "initializer_range", "bos_token_id", "eos_token_id",
              "pad_token_id")
_QWEN2_KEYS = ("use_sliding_window", "sliding_window", "max_window_layers")


def is_official(config: dict) -> bool:
    return "llm_config" in config or "InternVLChatModel" in config.get("architectures", [])


def _size(value: Any) -> int:
    return int(value[0]) if isinstance(value, list | tuple) else int(value)


def rope_parameters(llm: dict) -> dict:
    theta = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling") or {}
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    params = {k: v for k, v in scaling.items() if k != "type"}
    params["rope_type"] = scaling.get("rope_type") or scaling.get("type")
    params["rope_theta"] = theta
    return params


def text_config(llm: dict, layout: Layout) -> dict:
    """``llm_config`` → a llama (InternLM2, Llama) or qwen2 text config."""
    text = {k: llm[k] for k in _TEXT_KEYS if k in llm}
    text.setdefault("num_key_value_heads", layout.kv_heads)
    text["model_type"] = "qwen2" if layout.llm == "qwen2" else "llama"
    text["head_dim"] = layout.head_dim
    text["rope_parameters"] = rope_parameters(llm)
    text["tie_word_embeddings"] = False
    if layout.llm == "qwen2":
        text.update({k: llm[k] for k in _QWEN2_KEYS if k in llm})
    else:
        text["attention_bias"] = bool(llm.get("bias", llm.get("attention_bias", False)))
        text["mlp_bias"] = False
    return text


def vision_config(vision: dict) -> dict:
    norm = vision.get("norm_type", "layer_norm")
    return {
        "model_type": "internvl_vision",
        "hidden_size": vision["hidden_size"],
        "intermediate_size": vision["intermediate_size"],
        "num_hidden_layers": vision["num_hidden_layers"],
        "num_attention_heads": vision["num_attention_heads"],
        "image_size": [_size(vision["image_size"])] * 2,
        "patch_size": [_size(vision["patch_size"])] * 2,
        "num_channels": vision.get("num_channels", 3),
        "hidden_act": vision.get("hidden_act", "gelu"),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "norm_type": "rms_norm" if norm == "rms_norm" else "layer_norm",
        "attention_bias": bool(vision.get("qkv_bias", True)),
        "use_qk_norm": bool(vision.get("qk_normalization", False)),
        "layer_scale_init_value": vision.get("initializer_factor", 0.1),
        "initializer_range": vision.get("initializer_range", 0.02),
        "use_absolute_position_embeddings": True,
        "use_mean_pooling": True,  # InternViT has no final LayerNorm
        "attention_dropout": 0.0, "hidden_dropout_prob": 0.0, "projection_dropout": 0.0,
    }


def tile_size(official: dict) -> int:
    return _size(official.get("force_image_size") or official["vision_config"]["image_size"])


def tokens_per_tile(official: dict) -> int:
    patches = tile_size(official) // _size(official["vision_config"]["patch_size"])
    return int(patches * patches * float(official.get("downsample_ratio", 0.5)) ** 2)


def native_config(official: dict, image_token_id: int) -> dict:
    """The native ``config.json`` of an official InternVL2/2.5 ``config.json``."""
    if official.get("ps_version", "v2") != "v2":
        raise CheckpointError(f"ps_version={official.get('ps_version')!r}: only the v2 pixel "
                              "shuffle has a transformers-native equivalent")
    layout = Layout.from_official_config(official)
    dtype = official.get("torch_dtype") or official["llm_config"].get("torch_dtype")
    config = {
        "architectures": ["InternVLForConditionalGeneration"],
        "model_type": "internvl",
        "vision_config": vision_config(official["vision_config"]),
        "text_config": text_config(official["llm_config"], layout),
        "image_token_id": image_token_id,
        "image_seq_length": tokens_per_tile(official),
        "downsample_ratio": float(official.get("downsample_ratio", 0.5)),
        "projector_hidden_act": "gelu",
        "vision_feature_layer": int(official.get("select_layer", -1)),
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
        # InternVL's tiling limits, kept where vlmtune's InternVL family reads them
        "max_dynamic_patch": int(official.get("max_dynamic_patch", 12))
        if official.get("dynamic_image_size", True) else 1,
        "min_dynamic_patch": int(official.get("min_dynamic_patch", 1)),
        "use_thumbnail": bool(official.get("use_thumbnail", True)),
    }
    if dtype:
        config["dtype"] = dtype
    return config


def official_config(native: dict, like: dict) -> dict:
    """The official ``config.json`` for native weights tuned from the checkpoint ``like``.

    The base's config is the template (architecture, remote-code ``auto_map``, template,
    tiling settings); the dimensions are checked against the native config.
    """
    text, llm = native.get("text_config", {}), like.get("llm_config", {})
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if key in text and key in llm and text[key] != llm[key]:
            raise CheckpointError(f"--like base has llm_config.{key}={llm[key]}, the model "
                                  f"{text[key]}: it was not tuned from that base")
    out = dict(like)
    out["llm_config"] = dict(llm, vocab_size=text.get("vocab_size", llm.get("vocab_size")))
    return out

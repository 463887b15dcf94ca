"""Training precision: fp32 master weights for what trains, autocast where dtypes meet.

``train.precision`` (bf16 | fp16 | fp32; null = bf16 on CUDA, fp32 on CPU) is the compute
dtype of the forward. Whatever it is, the parameters that train are kept in fp32 for the
optimizer (an AdamW step of lr * 1 on a bf16 weight of ~0.02 is below its rounding step, so
most entries never move), while frozen ones stay in ``model.dtype``. Where a frozen
low-precision weight meets an fp32 trainable one (e.g. a bf16 LLM with an fp32 projector at
fp32 precision), the forward runs under autocast to the frozen dtype: the trainable module
computes in that dtype from its fp32 weights, and its gradient reaches them in fp32.
The train stage casts the trained weights back to ``model.dtype`` before saving them, so an
adapter or trained model is written in the dtype its base was loaded in (LoRA factors too,
which peft creates in fp32 and upcasts again on loading); checkpoints keep fp32 for resume.
"""

from __future__ import annotations

from collections import Counter
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(precision: str | None, device: str) -> str:
    """``train.precision``, or its default for ``device``: bf16 on CUDA, fp32 elsewhere."""
    if precision is not None:
        return precision
    return "bf16" if device.startswith("cuda") else "fp32"


def frozen_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype most frozen floating-point parameters have (``model.dtype``), or None."""
    counts = Counter(p.dtype for p in model.parameters()
                     if not p.requires_grad and p.is_floating_point())
    return counts.most_common(1)[0][0] if counts else None


def keep_master_weights(model: nn.Module) -> None:
    """Cast every trainable parameter to fp32 in place (the same ``Parameter`` objects, so
    optimizer groups built before stay valid)."""
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()


def cast_trainable(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the trainable parameters to ``dtype`` (after training: the dtype saved)."""
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def autocast_dtype(model: nn.Module, precision: str) -> torch.dtype | None:
    """The dtype to autocast the forward to (None: no autocast).

    bf16 / fp16: that dtype. fp32: the frozen weights' dtype when it is a lower precision
    (they cannot compute in fp32 without a full-size copy), else none.
    """
    if precision != "fp32":
        return DTYPES[precision]
    frozen = frozen_dtype(model)
    return frozen if frozen in (torch.bfloat16, torch.float16) else None


def autocast(device: str, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` on ``device``'s type to ``dtype``, or nothing for None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)

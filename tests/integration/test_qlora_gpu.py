"""QLoRA: 4-bit NF4 base + LoRA. Runs only where CUDA and bitsandbytes exist."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from vlmtune.config import compose_recipe, validate
from vlmtune.models.loading import load_model
from vlmtune.models.methods import apply_method

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
    reason="QLoRA needs CUDA and bitsandbytes")


@needs_cuda
def test_qlora_quantizes_the_llm_and_trains_only_adapters(tiny_model_dir):
    model_dir, _ = tiny_model_dir
    recipe = validate(compose_recipe(["experiment=demo", "method=qlora",
                                      f"model.path={model_dir}"]))
    loaded = load_model(model_dir, recipe.model, nf4=True)
    linear_types = {type(m).__name__ for n, m in loaded.model.named_modules()
                    if n.startswith(loaded.family.llm) and hasattr(m, "weight")}
    assert "Linear4bit" in linear_types
    tuned = apply_method(loaded.model.cuda(), loaded.family, recipe.method, lr=1e-4,
                         projector_lr=None, weight_decay=0.0)
    names = [n for n, p in tuned.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "multi_modal_projector" in n for n in names)

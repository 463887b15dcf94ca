"""Shared fixtures."""

from __future__ import annotations

import pytest

from vlmtune.data.templates import INTERNVL2_SYSTEM

TINY_CORPUS = [
    "What dish is shown in the picture? Answer with the letter of the right option.",
    "The dish in the picture is Peking duck, roasted until the skin is crisp.",
    "Here are the options: (A) noodles (B) dumplings (C) hot pot (D) rice",
    "图中的菜是什么？请根据上图从所提供的选项中选择一个正确答案。",
    "图中的菜是北京烤鸭，选项有：（A) 麻婆豆腐（B) 小笼包（C) 火锅（D) 烤鸭",
    "我选择（A)。这道菜来自四川，主要食材是豆腐和牛肉末。",
    INTERNVL2_SYSTEM,
]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ~500) trained on a small fixed corpus."""
    from vlmtune.models.tokenizer import train_tokenizer

    return train_tokenizer(TINY_CORPUS * 4, vocab_size=500)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache (tiny model, synthetic data) for the whole session: both are deterministic."""
    return tmp_path_factory.mktemp("vlmtune-cache")


@pytest.fixture
def demo_overrides(shared_cache, tmp_path, monkeypatch):
    """``experiment=demo`` with its outputs and a fresh MLflow store under tmp_path."""
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    return ["experiment=demo", f"cache_dir={shared_cache}", f"output_root={tmp_path / 'outputs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]


@pytest.fixture(scope="session")
def tiny_model_dir(shared_cache):
    """The demo's tiny InternVL, built once into the shared cache."""
    from vlmtune.config import compose_recipe, validate
    from vlmtune.models.loading import ensure_model_dir

    recipe = validate(compose_recipe(["experiment=demo", f"cache_dir={shared_cache}"]))
    return ensure_model_dir(recipe.model), recipe


@pytest.fixture
def merge_random_adapter(tmp_path):
    """``(model_dir, recipe) -> (loaded, merged_dir)``: a trained-looking LoRA adapter
    (B != 0, a changed projector copy) saved to tmp_path/adapter and merged into
    tmp_path/merged, whose file set is checked on the way."""
    import torch

    from vlmtune.convert.merge import merge_to_dir
    from vlmtune.models.loading import load_model
    from vlmtune.models.methods import apply_method

    def merge(model_dir, recipe):
        loaded = load_model(model_dir, recipe.model)
        tuned = apply_method(loaded.model, loaded.family, recipe.method, lr=1e-3,
                             projector_lr=None, weight_decay=0.0)
        torch.manual_seed(1)
        with torch.no_grad():
            for param in tuned.model.parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param) * 0.05)
        tuned.model.save_pretrained(tmp_path / "adapter")
        merged_dir = merge_to_dir(model_dir, tmp_path / "adapter", tmp_path / "merged",
                                  recipe.model)
        assert {"config.json", "model.safetensors", "tokenizer.json",
                "preprocessor_config.json", "processor_config.json"} <= \
            {p.name for p in merged_dir.iterdir()}
        return loaded, merged_dir

    return merge


@pytest.fixture(scope="session")
def tokenizer_kinds(tmp_path_factory):
    """The three real tokenizer kinds, trained locally once: ``internlm2`` (SentencePiece,
    BOS, no prefix space), ``llama`` (SentencePiece, BOS, prefix space), ``qwen2`` (byte-level
    BPE, no BOS); see tests/fixtures/tokenizers.py."""
    from tests.fixtures.tokenizers import tokenizer_kinds

    return tokenizer_kinds(tmp_path_factory.mktemp("tokenizers"))


@pytest.fixture(scope="session")
def internvl_hf_dir(tmp_path_factory, tokenizer_kinds):
    """A tiny HF-native InternVL saved as transformers' converter saves one (InternLM2-style
    tokenizer, converter-default image processor: crop_to_patches False)."""
    from tests.fixtures.checkpoints import internvl_hf_checkpoint

    return internvl_hf_checkpoint(tmp_path_factory.mktemp("internvl_hf"),
                                  tokenizer_kinds["internlm2"])

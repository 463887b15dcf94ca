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

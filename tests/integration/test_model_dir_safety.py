"""``model.path`` is the user's checkpoint: never deleted, overwritten or created by vlmtune.

Only vlmtune's own directories (an absent / empty path in ``<cache_dir>/models``, or one that
carries the tiny marker) are built into.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmtune.config import compose_recipe, validate
from vlmtune.errors import ConfigError
from vlmtune.models.loading import TINY_MARKER, ensure_model_dir, load_model
from vlmtune.pipelines.preflight import preflight
from vlmtune.pipelines.runner import run_pipeline

FAST = ["train.max_iters=2", "train.save_every=2", "benchmark.limit=2",
        "benchmark.scorers=[likelihood]", "tracking=disabled"]
STAGES = ["ingest", "train", "convert", "evaluate", "register"]


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def user_model(tiny_model_dir, tmp_path) -> Path:
    """A user's HF-native checkpoint (no vlmtune marker): the tiny model with its vision tower
    changed, saved by transformers into ``tmp_path/my-internvl-hf``."""
    model_dir, recipe = tiny_model_dir
    loaded = load_model(model_dir, recipe.model)
    torch.manual_seed(7)
    with torch.no_grad():
        for name, param in loaded.model.named_parameters():
            if "vision_tower" in name:
                param.add_(torch.randn_like(param) * 0.1)
    out = tmp_path / "my-internvl-hf"
    loaded.model.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    loaded.family.save_processing(loaded.images, out)
    assert not (out / TINY_MARKER).exists()
    return out


def test_user_checkpoint_survives_the_demo_and_is_the_one_trained(user_model, demo_overrides):
    before = checksums(user_model)
    recipe = validate(compose_recipe([*demo_overrides, f"model.path={user_model}", *FAST]))
    result = run_pipeline(recipe)
    assert result.ran == STAGES
    assert checksums(user_model) == before  # every file, byte for byte; none added or removed
    assert f"path: {user_model}" in (result.run_dir / "config.yaml").read_text()
    # the merged model's frozen vision tower is the user's (changed) one, not the tiny build's
    user = load_file(user_model / "model.safetensors")
    merged = load_file(result.run_dir / "merged/model.safetensors")
    vision = [k for k in user if k.startswith("vision_tower.")]
    assert vision and all(torch.equal(user[k], merged[k]) for k in vision)


def test_absent_path_is_not_created(demo_overrides, tmp_path):
    missing = tmp_path / "nonexistent" / "model"
    recipe = validate(compose_recipe([*demo_overrides, f"model.path={missing}", *FAST]))
    with pytest.raises(ConfigError, match=r"model\.path=.*nonexistent/model.*does not exist"):
        preflight(recipe, STAGES)
    with pytest.raises(ConfigError, match=r"model\.path="):
        run_pipeline(recipe)
    assert not (tmp_path / "nonexistent").exists()


def test_config_only_directory_is_refused_untouched(tiny_model_dir, demo_overrides, tmp_path):
    model_dir, _ = tiny_model_dir
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(model_dir / "config.json", partial / "config.json")
    before = checksums(partial)
    recipe = validate(compose_recipe([*demo_overrides, f"model.path={partial}", *FAST]))
    with pytest.raises(ConfigError,
                       match=r"model\.path=.*partial.*lacks weights .*and tokenizer files"):
        preflight(recipe, STAGES)
    assert checksums(partial) == before


def test_build_tiny_refuses_a_foreign_directory(user_model, demo_overrides):
    before = checksums(user_model)
    recipe = validate(compose_recipe([*demo_overrides, f"model.path={user_model}",
                                      "model.build=tiny"]))
    with pytest.raises(ConfigError, match=r"model\.build=tiny would replace model\.path="):
        ensure_model_dir(recipe.model, recipe.cache_dir)
    assert checksums(user_model) == before


def test_build_none_never_builds_even_in_the_cache(demo_overrides, tmp_path):
    cache = tmp_path / "cache"
    recipe = validate(compose_recipe([*demo_overrides, f"cache_dir={cache}", "model.build=none"]))
    with pytest.raises(ConfigError, match=r"model\.path="):
        ensure_model_dir(recipe.model, recipe.cache_dir)
    assert not (cache / "models").exists()


def test_auto_builds_into_the_cache_before_ingest(demo_overrides, tmp_path):
    cache = tmp_path / "cache"
    recipe = validate(compose_recipe([*demo_overrides, f"cache_dir={cache}"]))
    preflight(recipe, STAGES)
    assert (Path(recipe.model.path) / TINY_MARKER).is_file()
    assert Path(recipe.model.path).is_relative_to(cache / "models")
    assert not (tmp_path / "outputs").exists()  # no run directory yet: nothing else was done

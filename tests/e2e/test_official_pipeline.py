"""A recipe whose model.path is an official InternVL2 checkpoint runs the whole pipeline:
converted once into the cache, trained, merged, exported back to the official layout, evaluated."""

from __future__ import annotations

import json
import logging

import torch
from tests.fixtures.official import (
    REMOTE_CODE,
    load_official,
    official_forward,
    tokens_per_tile,
    write_official,
)
from transformers import AutoModelForImageTextToText

from vlmtune.config import compose_recipe, validate
from vlmtune.models.loading import ensure_model_dir
from vlmtune.pipelines.runner import run_pipeline


def test_official_checkpoint_through_the_pipeline(shared_cache, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    official = write_official(tmp_path / "InternVL2-tiny", kv_heads=2, seed=7)
    recipe = validate(compose_recipe([
        "experiment=demo", f"cache_dir={shared_cache}", f"output_root={tmp_path / 'out'}",
        "tracking=disabled", f"model.path={official}", "model.build=none", "model.max_tiles=2",
        "train.max_iters=3", "train.save_every=3", "train.batch_size=4", "train.lr=5e-2",
        "benchmark.limit=4", "benchmark.scorers=[likelihood]"]))
    with caplog.at_level(logging.INFO, logger="vlmtune"):
        run_pipeline(recipe)
    assert "converting it once into" in caplog.text
    (run_dir,) = (tmp_path / "out").glob("demo/*")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vlmtune"):
        converted = ensure_model_dir(recipe.model, recipe.cache_dir)
    assert "using its converted copy" in caplog.text  # converted once, reused after
    assert converted.parent == shared_cache / "converted"

    export = run_dir / "export" / "official"
    for name in (REMOTE_CODE, "configuration_internvl_chat.py", "tokenizer.model",
                 "tokenizer_config.json", "generation_config.json"):
        assert (export / name).read_bytes() == (official / name).read_bytes()
    config, tuned = load_official(export)
    assert config["architectures"] == ["InternVLChatModel"]
    _, source = load_official(official)
    assert sorted(tuned) == sorted(source)
    assert not torch.equal(tuned["language_model.model.layers.0.attention.wqkv.weight"],
                           source["language_model.model.layers.0.attention.wqkv.weight"])

    merged = run_dir / "merged"
    image_token_id = json.loads((merged / "config.json").read_text())["image_token_id"]
    ids = torch.tensor([[1, 15, 17] + [image_token_id] * tokens_per_tile() + [40, 41, 9]])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    model = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32).eval()
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=pixels).logits
        got = official_forward(tuned, config, ids, pixels, image_token_id)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    metrics = json.loads((run_dir / "eval" / "tuned" / "foodie_synth_sivqa" /
                          "metrics.json").read_text())
    assert metrics  # evaluated

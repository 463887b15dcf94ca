"""Precision: trainable weights train in fp32 (master weights) on a bf16 model on the CPU, frozen
ones stay bf16 and untouched; the trained weights are saved in model.dtype."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmtune.config.schema import TrainConfig
from vlmtune.data.collate import Collator, ConversationDataset
from vlmtune.data.templates import get_template
from vlmtune.models.loading import load_model
from vlmtune.models.methods import apply_method, save_trained
from vlmtune.training.engine import train
from vlmtune.training.precision import autocast_dtype, cast_trainable, resolve_precision


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


def dataset(tmp_path, loaded, template) -> ConversationDataset:
    rows = []
    for k, colour in enumerate([(200, 40, 40), (20, 160, 90), (30, 30, 220), (220, 200, 10)]):
        Image.new("RGB", (60 + 10 * k, 50), colour).save(tmp_path / f"d{k}.png")
        rows.append({"id": f"r{k}", "image": f"d{k}.png", "conversations": [
            {"from": "human", "value": "<image>\n图中的菜是什么？"},
            {"from": "gpt", "value": f"我选择（{'ABCD'[k]})"}]})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ConversationDataset(tmp_path / "train.jsonl", tmp_path, loaded.tokenizer,
                               loaded.images, template=template, max_length=512)


def test_bf16_model_on_cpu_trains_its_projector_in_fp32_and_keeps_frozen_weights(
        tiny_model_dir, tmp_path):
    model_dir, recipe = tiny_model_dir
    model_cfg = dataclasses.replace(recipe.model, dtype="bfloat16")
    loaded = load_model(model_dir, model_cfg)
    tuned = apply_method(loaded.model, loaded.family, recipe.method, lr=3e-5, projector_lr=None,
                         weight_decay=0.0)  # the demo's method: LoRA, tutorial preset
    params = dict(tuned.model.named_parameters())
    projector = {n: p.detach().clone() for n, p in params.items()
                 if p.requires_grad and "multi_modal_projector" in n}
    llm = {n: p.detach().clone() for n, p in params.items()
           if not p.requires_grad and ".language_model." in n}
    assert projector and llm
    assert {p.dtype for p in projector.values()} == {torch.bfloat16}
    assert resolve_precision(None, "cpu") == "fp32"
    assert autocast_dtype(tuned.model, "fp32") == torch.bfloat16  # frozen bf16 meets fp32

    template = get_template(recipe.model.chat_template)
    cfg = TrainConfig(lr=3e-5, batch_size=2, max_iters=2, warmup_ratio=0.0, save_every=2,
                      max_grad_norm=None)
    train(tuned.model, dataset=dataset(tmp_path, loaded, template),
          collate_fn=Collator(loaded.tokenizer.pad_token_id, loaded.images.collate),
          param_groups=tuned.param_groups, cfg=cfg, work_dir=tmp_path / "logs",
          checkpoint_dir=tmp_path / "checkpoints", on_step=lambda step, metrics: None)

    changed = total = 0
    for name, before in projector.items():
        after = params[name]
        assert after.dtype == torch.float32, name  # master weights
        changed += int((after.detach() != before.float()).sum())
        total += before.numel()
    assert changed / total >= 0.99, f"{changed} of {total} projector entries changed"
    for name, before in llm.items():
        assert params[name].dtype == torch.bfloat16, name
        assert torch.equal(params[name], before), name

    # saved in model.dtype: what the train stage writes after casting back
    cast_trainable(tuned.model, torch.bfloat16)
    save_trained(tuned, tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}

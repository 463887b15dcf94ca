"""The shard-by-shard merge equals peft's merge_and_unload (LoRA, rsLoRA, modules_to_save)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForImageTextToText

from vlmtune.cli import main

LLM_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def sharded_base(tiny_model_dir, tmp_path_factory):
    """The tiny InternVL re-saved by transformers in several shards."""
    model_dir, _ = tiny_model_dir
    out = tmp_path_factory.mktemp("sharded") / "base"
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    model.save_pretrained(out, max_shard_size="300KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (out / name).write_bytes((model_dir / name).read_bytes())
    assert len(list(out.glob("model-*.safetensors"))) >= 3
    return out


@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_streamed_merge_equals_merge_and_unload(sharded_base, tmp_path, rslora, capsys):
    model = AutoModelForImageTextToText.from_pretrained(sharded_base, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, use_rslora=rslora, lora_dropout=0.0,
                        target_modules=r".*language_model.*\.(" + "|".join(LLM_LINEARS) + ")",
                        modules_to_save=["multi_modal_projector"])
    peft_model = get_peft_model(model, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    base = AutoModelForImageTextToText.from_pretrained(sharded_base, dtype=torch.float32)
    want = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload().state_dict()
    out = tmp_path / "merged"
    assert main(["checkpoint", "merge", str(sharded_base), str(tmp_path / "adapter"), str(out),
                 "--max-shard-size", "200KB", "--device", "cpu"]) == 0
    assert "merged 14 LoRA updates" in capsys.readouterr().out
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 4
    got = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).state_dict()
    untouched = AutoModelForImageTextToText.from_pretrained(sharded_base).state_dict()
    assert sorted(got) == sorted(want)
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst <= 1e-6
    changed = [k for k in want if not torch.equal(got[k], untouched[k])]
    assert len(changed) == 14 + 6  # every LoRA target and the projector's six tensors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_update_computed_on_cuda_equals_the_cpu_merge(sharded_base, tmp_path):
    model = AutoModelForImageTextToText.from_pretrained(sharded_base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                  target_modules=list(LLM_LINEARS)))
    torch.manual_seed(0)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    for device in ("cpu", "cuda"):
        assert main(["checkpoint", "merge", str(sharded_base), str(tmp_path / "adapter"),
                     str(tmp_path / device), "--device", device]) == 0
    cpu = AutoModelForImageTextToText.from_pretrained(tmp_path / "cpu").state_dict()
    gpu = AutoModelForImageTextToText.from_pretrained(tmp_path / "cuda").state_dict()
    assert max((cpu[k] - gpu[k]).abs().max().item() for k in cpu) <= 1e-5

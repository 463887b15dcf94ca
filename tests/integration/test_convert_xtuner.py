"""xtuner iter_N.pth (mmengine file or DeepSpeed dir) + official base → merged model whose
logits equal the base with the LoRA applied by peft."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from mmengine.logging import HistoryBuffer
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from tests.fixtures.official import load_official, official_forward, tokens_per_tile
from tests.fixtures.official import write_official as write_official_dir
from torch import nn
from transformers import AutoModelForImageTextToText

from vlmtune.convert.xtuner import import_xtuner
from vlmtune.errors import CheckpointError

R, ALPHA = 4, 16.0
TARGETS = ("attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2",
           "feed_forward.w3")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return write_official_dir(tmp_path_factory.mktemp("xt") / "base", kv_heads=2, seed=5)


def _xtuner_state(weights: dict) -> dict[str, torch.Tensor]:
    """What xtuner's InternVL_V1_5 saves for LoRA on the LLM + a trained projector."""
    g = torch.Generator().manual_seed(11)
    state = {}
    linears = [n.removesuffix(".weight") for n in weights
               if n.endswith(".weight") and any(t in n for t in TARGETS)]
    linears.append("language_model.output")  # xtuner's default targets include the head
    for name in linears:
        out_f, in_f = weights[name + ".weight"].shape
        inner = name.removeprefix("language_model.")
        key = f"model.language_model.base_model.model.{inner}"
        state[f"{key}.lora_A.default.weight"] = torch.randn(R, in_f, generator=g) * in_f**-0.5
        state[f"{key}.lora_B.default.weight"] = torch.randn(out_f, R, generator=g) * 0.2
    for name in (n for n in weights if n.startswith("mlp1.")):
        state["model." + name] = weights[name] + torch.randn(weights[name].shape, generator=g)
    return state


def _peft_merged(weights: dict, state: dict) -> dict[str, torch.Tensor]:
    """The base weights with the xtuner LoRA merged by peft (into a plain module tree)."""
    root = nn.Module()
    for name, tensor in weights.items():
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(tensor.clone(), requires_grad=False))
    targets = []
    for name, module in list(root.named_modules()):  # leaf modules holding a 2-D weight
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() == 2 and (
                any(t in name for t in TARGETS) or name == "language_model.output"):
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight = weight
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent), child, linear)
            targets.append(name)
    inject_adapter_in_model(LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                       target_modules=targets), root)
    lora = {k.removeprefix("model.language_model.base_model.model.").join(
        ["language_model.", ""]): v for k, v in state.items() if "lora_" in k}
    missing = set(lora) - set(root.state_dict())
    assert not missing, sorted(missing)[:3]
    root.load_state_dict(lora, strict=False)
    for module in root.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    merged = {k.replace(".base_layer.", "."): v for k, v in root.state_dict().items()
              if "lora_" not in k}
    merged.update({k.removeprefix("model."): v for k, v in state.items() if "lora_" not in k})
    return merged


def _write(shape: str, state: dict, root) -> object:
    if shape == "mmengine":
        path = root / "iter_64.pth"
        torch.save({"meta": {"epoch": 1, "iter": 64, "seed": 0, "cfg": "model = dict(...)"},
                    "state_dict": state,
                    "message_hub": {"log_scalars": {"loss": HistoryBuffer([1.0, 0.5], [1, 1])},
                                    "runtime_info": {"iter": 64}, "resumed_keys": {}}}, path)
    else:
        path = root / "iter_64.pth"
        path.mkdir()
        shapes = [OrderedDict((k, v.shape) for k, v in state.items())]
        torch.save({"module": state, "ds_version": "0.15.4", "global_steps": 64,
                    "param_shapes": shapes, "optimizer": None}, path / "mp_rank_00_model_states.pt")
    return path


@pytest.mark.parametrize("shape", ["mmengine", "deepspeed"])
def test_xtuner_checkpoint_merges_like_peft(base, tmp_path, shape):
    config, weights = load_official(base)
    state = _xtuner_state(weights)
    want_weights = _peft_merged(weights, state)
    pth = _write(shape, state, tmp_path)
    out = import_xtuner(pth, tmp_path / "hf", base=base, lora_alpha=ALPHA)
    native = json.loads((out / "config.json").read_text())
    ids = torch.tensor([[1, 15, 17] + [native["image_token_id"]] * tokens_per_tile() + [40, 9]])
    pixels = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        got = model(input_ids=ids, pixel_values=pixels).logits
        want = official_forward(want_weights, config, ids, pixels, native["image_token_id"])
        untuned = official_forward(weights, config, ids, pixels, native["image_token_id"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - untuned).abs().max() > 1e-2  # the LoRA and projector did change the model
    official = import_xtuner(pth, tmp_path / "official", base=base, lora_alpha=ALPHA,
                             official=True)
    _, back = load_official(official)
    assert sorted(back) == sorted(weights)
    for name, tensor in want_weights.items():
        torch.testing.assert_close(back[name], tensor, atol=1e-6, rtol=0)


class Payload:
    """Any class outside the allowlist."""


def test_pickle_with_unknown_globals_is_refused(base, tmp_path):
    torch.save({"state_dict": {}, "extra": Payload()}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="allowlist"):
        import_xtuner(tmp_path / "bad.pth", tmp_path / "out", base=base)
    assert not (tmp_path / "out").exists()


def test_lora_r_flag_must_match_the_shapes(base, tmp_path):
    _, weights = load_official(base)
    pth = _write("mmengine", _xtuner_state(weights), tmp_path)
    with pytest.raises(CheckpointError, match="rank 4"):
        import_xtuner(pth, tmp_path / "out", base=base, lora_r=128)


@pytest.mark.parametrize("shape", ["mmengine", "deepspeed"])
def test_cli_recognises_both_shapes_and_asks_for_the_base(base, tmp_path, shape, capsys):
    from vlmtune.cli import main

    _, weights = load_official(base)
    pth = _write(shape, _xtuner_state(weights), tmp_path)
    assert main(["checkpoint", "inspect", str(pth), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layout"] == "xtuner pth"
    assert main(["checkpoint", "to-hf", str(pth), str(tmp_path / "out")]) == 2
    assert "--base" in capsys.readouterr().err
    assert main(["checkpoint", "to-hf", str(pth), str(tmp_path / "out"), "--base", str(base),
                 "--lora-alpha", str(ALPHA)]) == 0
    assert (tmp_path / "out" / "config.json").exists()

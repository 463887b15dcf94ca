"""PLoRA on the tiny InternVL: the update lives at image-token positions only, and round-trips."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from vlmtune.data.images import image_token_block, tile_image
from vlmtune.data.templates import INTERNLM2, encode_prompt
from vlmtune.models.loading import load_model
from vlmtune.models.methods import llm_linear_names
from vlmtune.models.plora import (
    PLoraLinear,
    PLoRANotMergeable,
    apply_plora,
    is_plora_adapter,
    load_plora,
    save_plora,
)

R, ALPHA = 8, 16


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


@pytest.fixture
def loaded(tiny_model_dir):
    return _fresh(tiny_model_dir)


def _fresh(tiny_model_dir):
    model_dir, recipe = tiny_model_dir
    return load_model(model_dir, recipe.model)


def _fresh_base(tiny_model_dir):
    return _fresh(tiny_model_dir).model


def _plora(loaded, *, dropout: float = 0.0, modules_to_save: list[str] | None = None):
    names = llm_linear_names(loaded.model, loaded.family)
    return apply_plora(loaded.model, target_names=names, image_token_id=loaded.image_token_id,
                       r=R, alpha=ALPHA, dropout=dropout, modules_to_save=modules_to_save)


def _randomise_b(model, *, seed: int = 0, scale: float = 0.5) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param) * scale)


def _image_inputs(loaded, question: str = "图中的菜是什么？", colour=(200, 40, 40)):
    from PIL import Image

    pixel_values, tiles = tile_image(loaded.images.processor, Image.new("RGB", (96, 64), colour))
    block = image_token_block(tiles, loaded.images.tokens_per_tile)
    ids = encode_prompt(loaded.tokenizer, f"<image>\n{question}", template=INTERNLM2,
                        image_blocks=[block])
    return torch.tensor([ids]), pixel_values


def _text_ids(loaded):
    ids = encode_prompt(loaded.tokenizer, "图中的菜是北京烤鸭。", template=INTERNLM2)
    return torch.tensor([ids])


def _logits(model, input_ids, pixel_values=None):
    with torch.no_grad():
        return model(input_ids=input_ids, pixel_values=pixel_values).logits


def _ab_params(model):
    return {name: p for name, p in model.named_parameters() if "lora_A" in name or "lora_B" in name}


def test_text_positions_match_the_base_model_exactly(loaded, tiny_model_dir):
    base = _fresh_base(tiny_model_dir)
    ids, pixels = _image_inputs(loaded)
    text = _text_ids(loaded)
    model = _plora(loaded)
    _randomise_b(model)
    first_image = int((ids[0] == loaded.image_token_id).nonzero()[0])
    assert first_image > 0

    got, want = _logits(model, ids, pixels), _logits(base, ids, pixels)
    assert torch.equal(got[:, :first_image], want[:, :first_image])
    assert torch.equal(_logits(model, text), _logits(base, text))
    with torch.no_grad():  # inputs_embeds only: no ids, so no mask and no update
        embeds = base.get_input_embeddings()(text)
        assert torch.equal(model(inputs_embeds=embeds).logits, base(inputs_embeds=embeds).logits)

        # the mask of a finished forward is gone: calling the LLM alone on an image-length
        # input right after an image forward gives the base model's hidden states
        model(input_ids=ids, pixel_values=pixels)
        embeds = base.get_input_embeddings()(ids)
        llm, base_llm = model.get_base_model().model.language_model, base.model.language_model
        assert torch.equal(llm(inputs_embeds=embeds).last_hidden_state,
                           base_llm(inputs_embeds=embeds).last_hidden_state)


def test_visual_positions_change_only_once_b_is_nonzero(loaded, tiny_model_dir):
    base = _fresh_base(tiny_model_dir)
    ids, pixels = _image_inputs(loaded)
    model = _plora(loaded)
    assert all(isinstance(m, PLoraLinear) for n, m in model.named_modules()
               if "language_model" in n and n.endswith(("q_proj", "down_proj")))
    want = _logits(base, ids, pixels)
    assert torch.equal(_logits(model, ids, pixels), want)  # fresh: B = 0

    _randomise_b(model)
    got = _logits(model, ids, pixels)
    image_positions = (ids[0] == loaded.image_token_id).nonzero().flatten()
    first, last = int(image_positions[0]), int(image_positions[-1])
    per_position = (got - want).abs().amax(-1)[0]
    assert (per_position[first:last + 1] > 1e-3).all()  # every image position moved
    assert (per_position[last + 1:] > 1e-4).all()  # later text attends to changed states


def test_gradients_flow_only_through_visual_positions(loaded):
    ids, pixels = _image_inputs(loaded)
    text = _text_ids(loaded)
    model = _plora(loaded)
    _randomise_b(model)  # so that A's gradient (through B) is non-zero as well
    params = _ab_params(model)
    assert params and all(p.requires_grad for p in params.values())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(params)

    model(input_ids=text, labels=text).loss.backward()
    for name, param in params.items():
        assert param.grad is None or not param.grad.any(), name

    model.zero_grad(set_to_none=True)
    model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
    for name, param in params.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients(loaded, tiny_model_dir):
    ids, pixels = _image_inputs(loaded)
    grads = []
    for checkpointing in (False, True):
        current = loaded if not grads else _fresh(tiny_model_dir)
        model = _plora(current)
        _randomise_b(model)
        if checkpointing:
            model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        model.train()
        model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in _ab_params(model).items()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_greedy_generation_with_and_without_kv_cache_agree(loaded, tiny_model_dir):
    base = _fresh_base(tiny_model_dir)
    ids, pixels = _image_inputs(loaded)
    model = _plora(loaded)
    _randomise_b(model, scale=2.0)
    kwargs = dict(input_ids=ids, pixel_values=pixels, do_sample=False, max_new_tokens=8)
    with torch.no_grad():
        cached = model.generate(**kwargs, use_cache=True)
        uncached = model.generate(**kwargs, use_cache=False)
        untouched = base.generate(**kwargs, use_cache=True)
    assert cached.shape[1] > ids.shape[1]
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, untouched)  # the adapter did act on this prompt


def test_save_then_load_on_a_fresh_base_gives_identical_logits(loaded, tiny_model_dir, tmp_path):
    ids, pixels = _image_inputs(loaded)
    projector = loaded.family.projector.rsplit(".", 1)[-1]
    model = _plora(loaded, modules_to_save=[projector])  # XComposer2 pretraining: + projector
    _randomise_b(model)
    with torch.no_grad():  # a trained projector copy travels with the adapter
        for name, param in model.named_parameters():
            if projector in name and param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)
    out = save_plora(model, tmp_path / "adapter")

    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PLORA"
    assert config["plora"]["image_token_id"] == loaded.image_token_id
    assert (config["r"], config["lora_alpha"]) == (R, ALPHA)
    assert is_plora_adapter(out)

    reloaded = load_plora(_fresh_base(tiny_model_dir), out)
    assert not any(p.requires_grad for p in reloaded.parameters())
    assert torch.equal(_logits(reloaded, ids, pixels), _logits(model, ids, pixels))
    assert not torch.equal(_logits(reloaded, ids, pixels),
                           _logits(_fresh_base(tiny_model_dir), ids, pixels))


def test_plora_refuses_to_merge_and_plain_peft_refuses_to_load_it(loaded, tiny_model_dir,
                                                                   tmp_path):
    model = _plora(loaded)
    out = save_plora(model, tmp_path / "adapter")
    with pytest.raises(PLoRANotMergeable, match="image-token positions"):
        model.merge_and_unload()
    with pytest.raises(KeyError, match="PLORA"):  # peft knows no such adapter type
        PeftModel.from_pretrained(_fresh_base(tiny_model_dir), str(out))

    base = _fresh_base(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"]))
    lora.save_pretrained(str(tmp_path / "lora"))
    assert not is_plora_adapter(tmp_path / "lora")
    assert not is_plora_adapter(tmp_path / "missing")


def test_twenty_adamw_steps_lower_the_loss(loaded):
    torch.manual_seed(0)
    samples = [_image_inputs(loaded, "图中的菜是什么？", (200, 40, 40)),
               _image_inputs(loaded, "图中的菜是什么？", (30, 160, 60))]
    ids = torch.cat([s[0] for s in samples])  # same prompt: same length, no padding needed
    pixels = torch.cat([s[1] for s in samples])
    labels = ids.masked_fill(ids == loaded.image_token_id, -100)
    model = _plora(loaded, dropout=0.05)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses

"""The qwen2_vl and blip2 families: tiny model through the pipeline, label masks, LoRA targets,
multimodal RoPE in forward and generate, merge."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from vlmtune.config import compose_recipe, validate
from vlmtune.data.collate import Collator, ConversationDataset
from vlmtune.data.templates import IGNORE_INDEX, QWEN2_CHATML, encode_prompt, get_template
from vlmtune.errors import ConfigError
from vlmtune.models.families import blip2, qwen2_vl
from vlmtune.models.loading import ensure_model_dir, load_model
from vlmtune.models.methods import apply_method, llm_linear_names, load_adapter
from vlmtune.pipelines.runner import run_pipeline

FAMILIES = ["qwen2_vl", "blip2"]
QUESTION, ANSWER = "What dish is this?", "Peking duck."
FOLLOW_UP, ANSWER2 = "Where is it from?", "Beijing."


def _overrides(family: str, cache, tmp_path) -> list[str]:
    return ["experiment=demo", f"model=tiny_{family}", f"cache_dir={cache}",
            f"output_root={tmp_path}/out", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "train.max_iters=20", "train.save_every=10", "train.batch_size=4",
            # training/engine.py: a 1-step warmup (0.05 × 20 iters) leaves the peak LR at
            # 1e-3 × train.lr, as mmengine's chained cosine continues from the warmup's last LR.
            "train.warmup_ratio=0.0"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, shared_cache):
    """(model dir, recipe) of one family's tiny model, built once into the shared cache."""
    recipe = validate(compose_recipe([f"model=tiny_{request.param}",
                                      f"cache_dir={shared_cache}"]))
    return ensure_model_dir(recipe.model), recipe


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_trains_with_lora_through_the_pipeline(family, shared_cache, tmp_path,
                                                         monkeypatch):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    recipe = validate(compose_recipe(_overrides(family, shared_cache, tmp_path)))
    assert recipe.model.family == family

    result = run_pipeline(recipe, ["ingest", "train"])

    assert result.ran == ["ingest", "train"]
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    history = MlflowClient(recipe.tracking.uri).get_metric_history(result.mlflow_run_id,
                                                                  "train/loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses


def _one_record_dataset(tmp_path, loaded, template, size=(90, 60)):
    Image.new("RGB", size, (200, 40, 40)).save(tmp_path / "dish.png")
    record = {"id": "r1", "image": "dish.png", "conversations": [
        {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": ANSWER},
        {"from": "human", "value": FOLLOW_UP}, {"from": "gpt", "value": ANSWER2}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    return ConversationDataset(tmp_path / "train.jsonl", tmp_path, loaded.tokenizer,
                               loaded.images, template=template, max_length=1024)


# family → (prompt 1, reply 1, prompt 2, reply 2, tail) given the image block; the replies
# include the assistant's end marker, the only supervised tokens besides the reply text.
CHATS = {
    "qwen2_vl": lambda block: (
        f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"{block}\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n", f"{ANSWER}<|im_end|>",
        f"\n<|im_start|>user\n{FOLLOW_UP}<|im_end|>\n<|im_start|>assistant\n",
        f"{ANSWER2}<|im_end|>", "\n"),
    "blip2": lambda block: (
        f"Question: {block}\n{QUESTION} Answer: ", f"{ANSWER}\n",
        f"Question: {FOLLOW_UP} Answer: ", f"{ANSWER2}\n", ""),
}
END_TOKEN = {"qwen2_vl": "<|im_end|>", "blip2": "Ċ"}  # "\n" in byte-level BPE


def test_label_mask_is_token_exact(tiny, tmp_path):
    model_dir, recipe = tiny
    family = recipe.model.family
    loaded = load_model(model_dir, recipe.model)
    tok = loaded.tokenizer
    sample = _one_record_dataset(tmp_path, loaded, get_template(recipe.model.chat_template))[0]
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    n_image = ids.count(loaded.image_token_id)
    if family == "qwen2_vl":  # 90×60 → 84×56 px → 6×4 patches of 14 → 3×2 tokens
        block = "<|vision_start|>" + "<|image_pad|>" * n_image + "<|vision_end|>"
        assert n_image == 6
        assert sample["images"]["image_grid_thw"].tolist() == [[1, 4, 6]]
        assert sample["images"]["pixel_values"].shape == (24, 3 * 2 * 14 * 14)
    else:  # any image → one 56×56 square → the Q-Former's 8 queries
        block = "<image>" * n_image
        assert n_image == 8
        assert sample["images"]["pixel_values"].shape == (1, 3, 56, 56)

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    prompt1, reply1, prompt2, reply2, tail = (enc(t) for t in CHATS[family](block))
    assert ids == prompt1 + reply1 + prompt2 + reply2 + tail
    ignored = [IGNORE_INDEX]
    assert labels == (ignored * len(prompt1) + reply1 + ignored * len(prompt2) + reply2 +
                      ignored * len(tail))
    for reply in (reply1, reply2):
        assert tok.convert_ids_to_tokens(reply[-1]) == END_TOKEN[family]
    assert all(lab == IGNORE_INDEX for i, lab in zip(ids, labels, strict=True)
               if i == loaded.image_token_id)
    # the tokenizer's own chat template writes the same text
    messages = [{"role": "user", "content": f"{block}\n{QUESTION}"},
                {"role": "assistant", "content": ANSWER},
                {"role": "user", "content": FOLLOW_UP},
                {"role": "assistant", "content": ANSWER2}]
    assert tok.apply_chat_template(messages, tokenize=False) == tok.decode(ids)


GENERATION_PROMPTS = {
    "qwen2_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\nWhat dish is this?<|im_end|>\n<|im_start|>assistant\n",
    "blip2": "Question: What dish is this? Answer: ",
}


def test_prompt_is_the_generation_prompt_of_the_chat_template(tiny):
    model_dir, recipe = tiny
    tok = AutoTokenizer.from_pretrained(model_dir)
    theirs = tok.apply_chat_template([{"role": "user", "content": QUESTION}],
                                     add_generation_prompt=True, tokenize=False)
    assert theirs == GENERATION_PROMPTS[recipe.model.family]
    template = get_template(recipe.model.chat_template)
    assert encode_prompt(tok, QUESTION, template=template) == \
        tok.encode(theirs, add_special_tokens=False)


# Parts of each family that LoRA must never touch (vision, projector, Q-Former, LM head).
NEVER_LORA = {"qwen2_vl": ("model.visual", "lm_head"),
              "blip2": ("vision_model", "qformer", "language_projection",
                        "language_model.lm_head")}


def test_lora_targets_only_the_llm_linear_layers(tiny):
    model_dir, recipe = tiny
    family = recipe.model.family
    loaded = load_model(model_dir, recipe.model)
    llm_linears = set(llm_linear_names(loaded.model, loaded.family))
    linears = {n for n, m in loaded.model.named_modules() if isinstance(m, nn.Linear)}
    assert llm_linears and llm_linears < linears

    tuned = apply_method(loaded.model, loaded.family, recipe.method, lr=1e-3,
                         projector_lr=None, weight_decay=0.0)

    with_lora = {n.removeprefix("base_model.model.") for n, m in tuned.model.named_modules()
                 if hasattr(m, "lora_A")}
    assert with_lora == llm_linears
    assert not any(n.startswith(NEVER_LORA[family]) for n in with_lora)
    trainable = {n for n, p in tuned.model.named_parameters() if p.requires_grad}
    projector = loaded.family.projector.rsplit(".", 1)[-1]
    # besides the adapters, only the projector learns (method.freeze=tutorial)
    assert all("lora_" in n or f"{projector}.modules_to_save" in n for n in trainable)
    assert any(f"{projector}.modules_to_save" in n for n in trainable)
    if family == "blip2":
        assert not any("qformer" in n or "query_tokens" in n for n in trainable)


def _images(sizes):
    return [Image.new("RGB", size, (30 * i, 200 - 30 * i, 90)) for i, size in enumerate(sizes)]


def _prompt(loaded, template, images):
    encoded = loaded.images.encode(images)
    ids = encode_prompt(loaded.tokenizer, "<image>\n" * len(images) + QUESTION,
                        template=template, image_blocks=encoded.blocks)
    return ids, encoded.tensors


@pytest.fixture(scope="module")
def qwen_loaded(shared_cache):
    recipe = validate(compose_recipe(["model=tiny_qwen2_vl", f"cache_dir={shared_cache}"]))
    return load_model(ensure_model_dir(recipe.model), recipe.model)


def test_qwen2_vl_forward_derives_the_token_types_for_multimodal_rope(qwen_loaded):
    model = qwen_loaded.model
    ids, tensors = _prompt(qwen_loaded, QWEN2_CHATML, _images([(90, 60), (40, 120)]))
    input_ids = torch.tensor([ids])
    types = (input_ids == model.config.image_token_id).int()
    with torch.no_grad():
        derived = model(input_ids=input_ids, **tensors).logits
        explicit = model(input_ids=input_ids, mm_token_type_ids=types, **tensors).logits
        flat = model(input_ids=input_ids, mm_token_type_ids=torch.zeros_like(types),
                     **tensors).logits
    torch.testing.assert_close(derived, explicit)
    assert (derived - flat).abs().max() > 1e-3  # the 3-D positions matter


def test_batched_generate_with_left_padding_matches_stepwise_forward(tiny):
    """``generate`` on a left-padded batch (as the evaluation calls it) places the images as
    ``forward`` does: for Qwen2-VL, with their 3-D positions."""
    model_dir, recipe = tiny
    loaded = load_model(model_dir, recipe.model)
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    model.generation_config.eos_token_id = None  # always 4 new tokens
    template = get_template(recipe.model.chat_template)
    prompts = [_prompt(loaded, template, _images([size])) for size in [(90, 60), (160, 150)]]
    width = max(len(ids) for ids, _ in prompts)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in prompts])
    attention = (torch.arange(width) >= width - torch.tensor([[len(i)] for i, _ in prompts]))
    images = loaded.images.collate([t for _, t in prompts])

    out = model.generate(input_ids=input_ids, attention_mask=attention.long(), **images,
                         max_new_tokens=4, do_sample=False, pad_token_id=pad)

    for row, (ids, tensors) in enumerate(prompts):
        seq = torch.tensor([ids])
        with torch.no_grad():
            for _ in range(4):
                step = model(input_ids=seq, **tensors).logits[0, -1].argmax()
                seq = torch.cat([seq, step.view(1, 1)], dim=1)
        assert out[row, width:].tolist() == seq[0, len(ids):].tolist()


def test_qwen2_5_vl_checkpoints_fit_the_family(qwen_loaded):
    """Qwen2.5-VL has the same module layout, tokens and image path (tiny, random)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = qwen_loaded.model.config.text_config.to_dict()
    text["model_type"] = "qwen2_5_vl_text"
    ids = {k: getattr(qwen_loaded.model.config, k) for k in (
        "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    config = Qwen2_5_VLConfig(text_config=text, vision_config={
        "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
        "out_hidden_size": text["hidden_size"], "fullatt_block_indexes": [1],
        "window_size": 56}, **ids)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    family = qwen_loaded.family
    names = dict(model.named_modules())
    assert {family.llm, family.projector, family.vision, family.lm_head} <= set(names)
    assert llm_linear_names(model, family)
    qwen2_vl.derive_token_types(model)
    ids, tensors = _prompt(qwen_loaded, QWEN2_CHATML, _images([(90, 60)]))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **tensors).logits
    assert logits.shape == (1, len(ids), len(qwen_loaded.tokenizer))


def test_blip2_generation_stops_at_the_template_end(shared_cache):
    """The tiny BLIP-2 is trained to end replies with "\\n" (as LAVIS trains OPT)."""
    from transformers import GenerationConfig

    recipe = validate(compose_recipe(["model=tiny_blip2", f"cache_dir={shared_cache}"]))
    model_dir = ensure_model_dir(recipe.model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    newline = tok.encode("\n", add_special_tokens=False)
    assert len(newline) == 1
    assert GenerationConfig.from_pretrained(model_dir).eos_token_id == \
        [newline[0], tok.eos_token_id]


def test_blip2_refuses_an_encoder_decoder_llm(tmp_path):
    model = SimpleNamespace(config=SimpleNamespace(use_decoder_only_language_model=False))
    with pytest.raises(ConfigError, match="encoder-decoder"):
        blip2.image_pipeline(model, tmp_path, None)


def test_blip2_trains_on_a_batch_without_images(shared_cache):
    recipe = validate(compose_recipe(["model=tiny_blip2", f"cache_dir={shared_cache}"]))
    model = load_model(ensure_model_dir(recipe.model), recipe.model).model
    input_ids = torch.tensor([[5, 6, 7, 8, 9]])

    out = model(input_ids=input_ids, labels=input_ids)  # no pixel_values

    with torch.no_grad():
        text_only = model.language_model(input_ids=input_ids).logits
    torch.testing.assert_close(out.logits, text_only)
    out.loss.backward()
    assert model.language_model.lm_head.weight.grad is not None


def test_batch_of_two_samples_with_different_images_trains(tiny, tmp_path):
    """The collated batch is what the model's forward checks: one token per image feature."""
    model_dir, recipe = tiny
    loaded = load_model(model_dir, recipe.model)
    template = get_template(recipe.model.chat_template)
    dataset = _one_record_dataset(tmp_path, loaded, template)
    (tmp_path / "b").mkdir()
    other = _one_record_dataset(tmp_path / "b", loaded, template, size=(200, 120))
    batch = Collator(loaded.tokenizer.pad_token_id, loaded.images.collate)([dataset[0],
                                                                            other[0]])
    out = loaded.model(**batch)
    assert torch.isfinite(out.loss)
    n_tokens = int((batch["input_ids"] == loaded.image_token_id).sum())
    assert n_tokens == dataset[0]["input_ids"].tolist().count(loaded.image_token_id) + \
        other[0]["input_ids"].tolist().count(loaded.image_token_id)
    broken = batch["input_ids"].clone()
    broken[broken == loaded.image_token_id] = loaded.tokenizer.pad_token_id
    if recipe.model.family == "qwen2_vl":  # the model refuses a token/feature mismatch
        with pytest.raises((ValueError, RuntimeError)):
            loaded.model(**{**batch, "input_ids": broken})


def test_merged_dir_loads_with_transformers_and_matches_adapter_logits(tiny, tmp_path,
                                                                         merge_random_adapter):
    model_dir, recipe = tiny
    loaded, merged_dir = merge_random_adapter(model_dir, recipe)
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    if recipe.model.family == "qwen2_vl":
        qwen2_vl.derive_token_types(merged)  # what the Qwen2-VL processor would give
    else:
        processor = AutoProcessor.from_pretrained(merged_dir)  # needs no torchvision
        assert processor.num_query_tokens == 8
    adapter_model = load_adapter(load_model(model_dir, recipe.model).model, tmp_path / "adapter")
    template = get_template(recipe.model.chat_template)
    ids, tensors = _prompt(loaded, template, _images([(96, 64)]))
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        want = adapter_model(input_ids=input_ids, **tensors).logits
        got = merged(input_ids=input_ids, **tensors).logits
        untouched = load_model(model_dir, recipe.model).model(input_ids=input_ids,
                                                               **tensors).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - untouched).abs().max() > 1e-3

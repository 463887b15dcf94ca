"""The llava and llava_next families: tiny model through the pipeline, vicuna masking, merge."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from vlmtune.config import compose_recipe, validate
from vlmtune.data.collate import Collator, ConversationDataset
from vlmtune.data.templates import (
    IGNORE_INDEX,
    VICUNA_SYSTEM,
    VICUNA_V1,
    encode_prompt,
    render_conversation,
)
from vlmtune.models.families.llava_next import grid_pinpoints, pad_patches
from vlmtune.models.loading import ensure_model_dir, load_model
from vlmtune.models.methods import load_adapter
from vlmtune.pipelines.runner import run_pipeline

FAMILIES = ["llava", "llava_next"]


@pytest.fixture(scope="module")
def _empty_mlflow_db(tmp_path_factory):
    """A migrated, empty MLflow store to copy: creating one costs seconds, copying nothing."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _overrides(family: str, cache, tmp_path) -> list[str]:
    return ["experiment=demo", f"model=tiny_{family}", f"cache_dir={cache}",
            f"output_root={tmp_path}/out", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            "train.max_iters=20", "train.save_every=10", "train.batch_size=4"]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, shared_cache):
    """(model dir, recipe) of one family's tiny model, built once into the shared cache."""
    recipe = validate(compose_recipe([f"model=tiny_{request.param}",
                                      f"cache_dir={shared_cache}"]))
    return ensure_model_dir(recipe.model), recipe


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_model_trains_with_lora_through_the_pipeline(family, shared_cache, tmp_path,
                                                         monkeypatch, _empty_mlflow_db):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    shutil.copy(_empty_mlflow_db, tmp_path / "mlflow.db")
    recipe = validate(compose_recipe(_overrides(family, shared_cache, tmp_path)))
    assert (recipe.model.family, recipe.model.chat_template) == (family, "vicuna_v1")

    result = run_pipeline(recipe, ["ingest", "train"])

    assert result.ran == ["ingest", "train"]
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    history = MlflowClient(recipe.tracking.uri).get_metric_history(result.mlflow_run_id,
                                                                  "train/loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, losses


def _record_dataset(tmp_path, loaded, size=(90, 60)):
    Image.new("RGB", size, (200, 40, 40)).save(tmp_path / "dish.png")
    record = {"id": "r1", "image": "dish.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat dish is this?"},
        {"from": "gpt", "value": "Peking duck."},
        {"from": "human", "value": "Where is it from?"},
        {"from": "gpt", "value": "Beijing."}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    return ConversationDataset(tmp_path / "train.jsonl", tmp_path, loaded.tokenizer,
                               loaded.images, template=VICUNA_V1, max_length=1024)


def test_vicuna_label_mask_is_token_exact(tiny, tmp_path):
    model_dir, recipe = tiny
    loaded = load_model(model_dir, recipe.model)
    tok = loaded.tokenizer
    sample = _record_dataset(tmp_path, loaded)[0]
    ids, labels = sample["input_ids"].tolist(), sample["labels"].tolist()
    n_image = ids.count(loaded.image_token_id)
    block = "<image>" * n_image

    def enc(text: str) -> list[int]:
        return tok.encode(text, add_special_tokens=False)

    # LLaVA's conv_vicuna_v1: "{sys} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"
    prompt1 = enc(f"{VICUNA_SYSTEM} USER: {block}\nWhat dish is this? ASSISTANT:")
    reply1 = enc(" Peking duck.") + [tok.eos_token_id]
    prompt2 = enc("USER: Where is it from? ASSISTANT:")
    reply2 = enc(" Beijing.") + [tok.eos_token_id]
    tail = []
    assert tok.eos_token == "</s>" and tok.convert_ids_to_tokens(reply1[-1]) == "</s>"
    assert ids == prompt1 + reply1 + prompt2 + reply2 + tail
    ignored = [IGNORE_INDEX]
    assert labels == (ignored * len(prompt1) + reply1 + ignored * len(prompt2) + reply2 +
                      ignored * len(tail))
    # llava: (56 / 14)² patches. llava_next: a 90×60 image fits the 2×2 grid best → 8×8
    # features, unpadded to 6 rows × 8, + 6 row newlines + 16 for the whole image.
    assert n_image == (16 if recipe.model.family == "llava" else 6 * 8 + 6 + 16)
    assert all(lab == IGNORE_INDEX for i, lab in zip(ids, labels, strict=True)
               if i == loaded.image_token_id)
    # the tokenizer's own chat template writes the same text
    messages = [{"role": "user", "content": f"{block}\nWhat dish is this?"},
                {"role": "assistant", "content": "Peking duck."},
                {"role": "user", "content": "Where is it from?"},
                {"role": "assistant", "content": "Beijing."}]
    assert tok.apply_chat_template(messages, tokenize=False) == tok.decode(ids)


def test_vicuna_prompt_matches_the_generation_prompt_of_the_chat_template(tiny):
    model_dir, _ = tiny
    tok = AutoTokenizer.from_pretrained(model_dir)
    ours = encode_prompt(tok, "What dish is this?", template=VICUNA_V1)
    theirs = tok.apply_chat_template([{"role": "user", "content": "What dish is this?"}],
                                     add_generation_prompt=True, tokenize=False)
    assert theirs == f"{VICUNA_SYSTEM} USER: What dish is this? ASSISTANT:"
    assert tok.encode(theirs, add_special_tokens=False) == ours
    conversation = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert render_conversation(conversation, template=VICUNA_V1, system="") == \
        "USER: q ASSISTANT: a</s>"


def test_llava_pads_images_to_a_square_with_the_mean_colour(shared_cache):
    recipe = validate(compose_recipe(["model=tiny_llava", f"cache_dir={shared_cache}"]))
    loaded = load_model(ensure_model_dir(recipe.model), recipe.model)
    wide = Image.new("RGB", (112, 56), (255, 255, 255))  # white, 2:1 → padded top and bottom
    pixels = loaded.images.encode([wide]).tensors["pixel_values"][0]
    assert pixels.shape == (3, 56, 56)
    mean_colour = pixels[:, 2, 28]  # a padded row: the mean colour, normalised ≈ 0
    assert mean_colour.abs().max() < 0.02
    assert pixels[:, 28, 28].min() > 1.5  # the white image itself


def test_llava_next_grids_and_patch_padding():
    assert grid_pinpoints(56, 2) == [[56, 112], [112, 56]]
    assert len(grid_pinpoints(336, 4)) == 7
    a = {"pixel_values": torch.ones(1, 5, 3, 4, 4), "image_sizes": torch.tensor([[60, 90]])}
    b = {"pixel_values": torch.ones(2, 3, 3, 4, 4), "image_sizes": torch.tensor([[56, 56]] * 2)}
    joined = pad_patches([b, a])
    assert joined["pixel_values"].shape == (3, 5, 3, 4, 4)
    assert joined["pixel_values"][:2, 3:].abs().sum() == 0  # zero patches fill up
    assert joined["image_sizes"].tolist() == [[56, 56], [56, 56], [60, 90]]


def test_a_batch_of_different_image_shapes_runs_through_the_model(tiny, tmp_path):
    model_dir, recipe = tiny
    loaded = load_model(model_dir, recipe.model)
    samples = []
    for i, size in enumerate([(90, 60), (40, 200), (56, 56)]):
        (tmp_path / str(i)).mkdir()
        samples.append(_record_dataset(tmp_path / str(i), loaded, size)[0])
    batch = Collator(loaded.tokenizer.pad_token_id, loaded.images.collate)(samples)
    with torch.no_grad():  # the model raises if image tokens and features disagree
        out = loaded.model(**batch)
    assert torch.isfinite(out.loss)


def test_merged_dir_loads_with_transformers_and_matches_adapter_logits(tiny, tmp_path,
                                                                         merge_random_adapter):
    model_dir, recipe = tiny
    loaded, merged_dir = merge_random_adapter(model_dir, recipe)
    merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
    image = Image.new("RGB", (96, 64), (200, 40, 40))
    encoded = loaded.images.encode([image])
    ids = encode_prompt(loaded.tokenizer, "<image>\nWhat dish is this?", template=VICUNA_V1,
                        image_blocks=encoded.blocks)
    # transformers' own processor, read from the merged dir, expands <image> the same way
    processor = AutoProcessor.from_pretrained(merged_dir)
    theirs = processor(images=[image], text=["<image>"], return_tensors="pt")
    assert theirs["input_ids"][0].tolist().count(loaded.image_token_id) == \
        encoded.num_image_tokens
    inputs = {"input_ids": torch.tensor([ids]), **encoded.tensors}
    adapter_model = load_adapter(load_model(model_dir, recipe.model).model, tmp_path / "adapter")
    base = load_model(model_dir, recipe.model).model
    with torch.no_grad():
        want = adapter_model(**inputs).logits
        got = merged(**inputs).logits
        untouched = base(**inputs).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # float32 re-association
    assert (got - untouched).abs().max() > 1e-3  # the merge changed the model

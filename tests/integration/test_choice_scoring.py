"""Likelihood scoring from a cached prompt equals scoring each option whole, and encodes each
image once per item."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlmtune.config import compose_recipe, validate
from vlmtune.data.images import open_image
from vlmtune.data.templates import encode_prompt, encode_reply, get_template
from vlmtune.evaluation.multiple_choice import MCItem, MultipleChoiceScorer
from vlmtune.models.loading import ensure_model_dir, load_model

CHOICES = ["北京烤鸭", "小笼包", "麻婆豆腐火锅", "饺子"]  # replies of different token lengths


def items(tmp_path) -> list[MCItem]:
    out = []
    for k, (size, colour) in enumerate([((90, 60), (200, 40, 40)), ((40, 120), (20, 160, 90)),
                                        ((64, 64), (30, 30, 220))]):
        path = tmp_path / f"dish{k}.png"
        Image.new("RGB", size, colour).save(path)
        out.append(MCItem(id=f"q{k}", question_type="main-ingredient",
                          question=f"<image>\n图中的菜是什么？{k}", images=[path],
                          choices=CHOICES[k:] + CHOICES[:k], letters="ABCD", answer=k % 4,
                          lang="zh"))
    return out


def whole_sequence_logps(loaded, template, item: MCItem) -> list[list[float]]:
    """The reference: each option appended to the prompt and the whole sequence run with its
    image, log-probabilities read off the logits one token at a time."""
    encoded = loaded.images.encode([open_image(p) for p in item.images])
    prompt = encode_prompt(loaded.tokenizer, item.question, template=template,
                           image_blocks=encoded.blocks, system=None)
    pixels = {k: v.to(loaded.model.dtype) if v.is_floating_point() else v
              for k, v in loaded.images.collate([encoded.tensors]).items()}
    rows = []
    for i in range(len(item.choices)):
        reply = encode_reply(loaded.tokenizer, item.reply(i), template)
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            logits = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  **pixels).logits[0].float()
        logp = F.log_softmax(logits, dim=-1)
        rows.append([float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(reply)])
    return rows


@pytest.mark.parametrize("model", ["tiny_internvl", "tiny_qwen2_vl"])
def test_cached_prompt_scores_equal_whole_sequences_with_one_image_encoding_per_item(
        model, shared_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    recipe = validate(compose_recipe(["experiment=demo", f"model={model}",
                                      f"cache_dir={shared_cache}"]))
    loaded = load_model(ensure_model_dir(recipe.model), recipe.model)
    template = get_template(recipe.model.chat_template)
    questions = items(tmp_path)
    rows = []  # pixel rows the vision tower encodes (items may share a call when batched)
    vision = loaded.model.get_submodule(loaded.family.vision)
    hook = vision.register_forward_hook(
        lambda _m, args, kwargs, _o: rows.append(
            (args[0] if args else next(v for v in kwargs.values()
                                      if isinstance(v, torch.Tensor))).shape[0]),
        with_kwargs=True)
    preds = MultipleChoiceScorer(loaded, template, None).likelihood(questions, 2, "base")
    hook.remove()
    once = sum(loaded.images.encode([open_image(p) for p in q.images]).tensors["pixel_values"]
               .shape[0] for q in questions)
    assert sum(rows) == once  # each image once per item, not once per option

    for item, pred in zip(questions, preds, strict=True):
        want = whole_sequence_logps(loaded, template, item)
        assert len({len(w) for w in want}) > 1  # the options' lengths differ (padding used)
        assert pred["scores"] == pytest.approx([sum(w) for w in want], abs=1e-4)
        assert pred["mean_scores"] == pytest.approx([sum(w) / len(w) for w in want], abs=1e-4)
        best = max(range(4), key=lambda i: sum(want[i]))
        assert pred["pred"] == "ABCD"[best]

"""Batched greedy generation gives each item the ids it gets alone; batched scoring stays
equal to per-item scoring."""

from __future__ import annotations

import pytest
from PIL import Image

from vlmtune.config import compose_recipe, validate
from vlmtune.data.images import open_image
from vlmtune.data.templates import get_template, stop_token_ids
from vlmtune.evaluation.multiple_choice import MCItem, MultipleChoiceScorer
from vlmtune.models.loading import ensure_model_dir, load_model

SIZES = [(90, 60), (40, 120), (64, 64), (200, 50), (30, 30), (120, 90), (50, 160)]


def mixed_items(tmp_path, n: int = 7) -> list[MCItem]:
    """Items with 0, 1 or 2 images of different aspect ratios and questions of different
    lengths (so prompts differ in length and tile count)."""
    out = []
    for k in range(n):
        paths = []
        for j in range(k % 3):
            path = tmp_path / f"img{k}_{j}.png"
            Image.new("RGB", SIZES[(k + j) % len(SIZES)], (30 * k, 200 - 20 * j, 90)).save(path)
            paths.append(path)
        out.append(MCItem(id=f"q{k}", question_type="t",
                          question="<image>\n" * len(paths) + "图中的菜是什么？" * (1 + k % 4),
                          images=paths, choices=["北京烤鸭", "小笼包", "麻婆豆腐火锅", "饺子"],
                          letters="ABCD", answer=k % 4, lang="zh"))
    return out


@pytest.fixture(scope="module", params=["tiny_internvl", "tiny_qwen2_vl"])
def scorer(request, shared_cache):
    recipe = validate(compose_recipe(["experiment=demo", f"model={request.param}",
                                      f"cache_dir={shared_cache}"]))
    loaded = load_model(ensure_model_dir(recipe.model), recipe.model)
    return MultipleChoiceScorer(loaded, get_template(recipe.model.chat_template), None)


def test_batched_generation_ids_equal_one_at_a_time(scorer, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    items = mixed_items(tmp_path)
    prompts = [scorer._prompt(item) for item in items]
    assert len({len(ids) for ids, _ in prompts}) == len(items)  # every prompt length differs
    if hasattr(scorer.lm.images, "tokens_per_tile"):  # InternVL: tile counts differ too
        tiles = {tuple(scorer.lm.images.encode([open_image(p) for p in i.images]).extra["tiles"])
                 for i in items if i.images}
        assert len({sum(t) for t in tiles}) > 2
    alone = [scorer.generate_ids([p], 12)[0] for p in prompts]
    batched = scorer.generate_ids(prompts, 12)
    assert batched == alone
    # each row ends at its first stop id or after 12 new tokens; a stopped row is cut there
    stops = set(stop_token_ids(scorer.tok, scorer.template, scorer.lm.model.generation_config))
    for row in alone:
        assert len(row) == 12 or (row[-1] in stops and not stops & set(row[:-1]))
    # through the scorer: batch 4 (a short last batch) gives the outputs of batch 1
    one = scorer.generate(items, 1, 12, "t")
    four = scorer.generate(items, 4, 12, "t")
    assert [p["output"] for p in four] == [p["output"] for p in one]
    assert [p["pred"] for p in four] == [p["pred"] for p in one]


def test_batched_likelihood_equals_one_item_at_a_time(scorer, tmp_path, monkeypatch):
    """Several items' prompts in one forward (InternVL; Qwen2-VL's prefill-derived positions
    keep it per item) give each item's per-item scores within 1e-4, and the same choices."""
    from vlmtune.evaluation.multiple_choice import _positions_from_prefill

    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    family = scorer.lm.family.name
    assert _positions_from_prefill(scorer.lm.model) == (family == "qwen2_vl")
    items = mixed_items(tmp_path)
    one = scorer.likelihood(items, 1, "t")
    four = scorer.likelihood(items, 4, "t")
    for a, b in zip(one, four, strict=True):
        assert b["scores"] == pytest.approx(a["scores"], abs=1e-4)
        assert b["mean_scores"] == pytest.approx(a["mean_scores"], abs=1e-4)
        assert b["pred"] == a["pred"]


def test_a_text_only_item_after_an_image_item_scores_as_its_whole_sequence(scorer, tmp_path,
                                                                         monkeypatch):
    """Qwen2-VL keeps rotary offsets from its last image prefill; a text-only item scored
    next must not inherit them (reference: prompt + option run whole, no cache)."""
    import torch
    import torch.nn.functional as F

    from vlmtune.data.templates import encode_prompt, encode_reply

    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    image_item, text_item = mixed_items(tmp_path, 4)[2:4]
    assert image_item.images and not text_item.images
    pred = scorer.likelihood([image_item, text_item], 1, "t")[1]
    prompt = encode_prompt(scorer.tok, text_item.question, template=scorer.template,
                           image_blocks=[], system=None)
    want = []
    for i in range(4):
        reply = encode_reply(scorer.tok, text_item.reply(i), scorer.template)
        ids = torch.tensor([prompt + reply])
        with torch.no_grad():
            logp = F.log_softmax(scorer.lm.model(input_ids=ids).logits[0].float(), dim=-1)
        want.append(sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(reply)))
    assert pred["scores"] == pytest.approx(want, abs=1e-4)

"""Batching: the length-grouped modality sampler, sequence packing, and resume fast-forward."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from vlmtune.config.schema import TrainConfig
from vlmtune.data.collate import Collator, ConversationDataset
from vlmtune.data.images import IMG_CONTEXT, build_image_processor
from vlmtune.data.templates import IGNORE_INDEX, INTERNLM2
from vlmtune.data.vision import InternVLTiles
from vlmtune.errors import ConfigError
from vlmtune.training.engine import build_batch_sampler, train
from vlmtune.training.packing import (
    PackedCollator,
    PackedDataset,
    pack_by_length,
    pack_samples,
)
from vlmtune.training.sampler import (
    LengthGroupedBatchSampler,
    SeededShuffleSampler,
    ShuffleBatchSampler,
    padding_fraction,
)

VOCAB = 50


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


def mixed_keys(n: int = 203, seed: int = 0) -> list[tuple[bool, int]]:
    """Every third sample has an image (long); text-only ones are short to medium."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 120, (n,), generator=g).tolist()
    return [(i % 3 == 0, length + (300 if i % 3 == 0 else 0)) for i, length in enumerate(lengths)]


def take(sampler, n: int) -> list[list[int]]:
    it = iter(sampler)
    return [next(it) for _ in range(n)]


# --- the samplers ----------------------------------------------------------------------------


def test_grouped_epoch_covers_every_sample_once_and_never_mixes_modalities():
    keys = mixed_keys()
    sampler = LengthGroupedBatchSampler(keys, batch_size=8, seed=3, megabatch=4)
    per_epoch = len(sampler)
    assert per_epoch == -(-68 // 8) + -(-135 // 8)  # 68 image samples, 135 text-only
    for epoch in range(3):
        batches = sampler.epoch_batches(epoch)
        assert len(batches) == per_epoch
        assert sorted(i for b in batches for i in b) == list(range(len(keys)))
        assert all(len({keys[i][0] for i in b}) == 1 for b in batches)
        short = Counter(keys[b[0]][0] for b in batches if len(b) < 8)
        assert all(n <= 1 for n in short.values())  # one short batch per modality at most
        # the batch with the most (padded) tokens comes first
        tokens = [len(b) * max(keys[i][1] for i in b) for b in batches]
        assert tokens[0] == max(tokens)
    assert sampler.epoch_batches(0) != sampler.epoch_batches(1)


def test_grouped_order_depends_only_on_seed_and_epoch():
    keys = mixed_keys()
    a = LengthGroupedBatchSampler(keys, batch_size=8, seed=3)
    assert a.epoch_batches(2) == LengthGroupedBatchSampler(keys, 8, seed=3).epoch_batches(2)
    assert a.epoch_batches(2) != LengthGroupedBatchSampler(keys, 8, seed=4).epoch_batches(2)


@settings(max_examples=25, deadline=None)
@given(start=st.integers(0, 120), batch_size=st.integers(1, 9), grouped=st.booleans())
def test_starting_later_is_the_same_stream_fast_forwarded(start, batch_size, grouped):
    keys = mixed_keys(n=37)
    def make(at):
        if grouped:
            return LengthGroupedBatchSampler(keys, batch_size, seed=1, start=at, megabatch=2)
        return ShuffleBatchSampler(len(keys), batch_size, seed=1, start=at)
    assert take(make(start), 10) == take(make(0), start + 10)[start:]


def test_shuffle_batches_are_the_seeded_permutation_cut_per_epoch():
    sampler = ShuffleBatchSampler(10, batch_size=4, seed=0)
    batches = take(sampler, 6)
    for epoch in (0, 1):
        order = SeededShuffleSampler(10, seed=0).epoch_order(epoch)
        assert batches[3 * epoch:3 * epoch + 3] == [order[:4], order[4:8], order[8:]]


def test_grouped_batches_pad_far_less_than_random_ones():
    keys = mixed_keys(n=2000)
    lengths = [length for _, length in keys]
    grouped = LengthGroupedBatchSampler(keys, batch_size=8, seed=0).epoch_batches(0)
    shuffled = ShuffleBatchSampler(len(keys), batch_size=8, seed=0).epoch_batches(0)
    assert padding_fraction(grouped, lengths) < 0.05
    assert padding_fraction(shuffled, lengths) > 0.3


# --- ConversationDataset.modality_lengths ----------------------------------------------------


def test_dataset_modality_lengths_follow_real_lengths(tmp_path, tiny_tokenizer):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (84, 28), (10, 200, 30)).save(images / "wide.png")  # 3 tiles + thumbnail
    Image.new("RGB", (28, 28), (90, 20, 130)).save(images / "square.png")  # 1 tile
    rows = []
    for i, (image, words) in enumerate([("wide.png", 2), (None, 20), ("square.png", 9),
                                        (None, 1), (["square.png", "wide.png"], 4)]):
        q = "图中的菜是什么？ " * words
        if image is not None:
            q = "<image>\n" * (len(image) if isinstance(image, list) else 1) + q
        rec = {"id": str(i), "conversations": [{"from": "human", "value": q},
                                               {"from": "gpt", "value": "北京烤鸭"}]}
        rows.append(json.dumps({**rec, **({"image": image} if image else {})},
                               ensure_ascii=False))
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    dataset = ConversationDataset(tmp_path / "d.jsonl", images, tiny_tokenizer,
                                  InternVLTiles(build_image_processor(tile_size=28, max_tiles=4),
                                                4), template=INTERNLM2, max_length=4000)
    keys = dataset.modality_lengths()
    assert [image for image, _ in keys] == [True, False, True, False, True]
    real = [len(dataset[i]["input_ids"]) for i in range(len(dataset))]
    image_tokens = [int((dataset[i]["input_ids"] == tiny_tokenizer.convert_tokens_to_ids(
        IMG_CONTEXT)).sum()) for i in range(len(dataset))]
    assert image_tokens == [16, 0, 4, 0, 20]
    # the estimate misses only the template's own tokens: a near-constant offset
    overhead = [r - k for r, (_, k) in zip(real, keys, strict=True)]
    assert max(overhead) - min(overhead) <= 2, (real, keys)


# --- packing ---------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 32), min_size=1, max_size=60), capacity=st.integers(32, 80))
def test_pack_by_length_keeps_every_sample_once_within_capacity(lengths, capacity):
    bins = pack_by_length(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    # best fit decreasing is never worse than 11/9 OPT + 1 (OPT >= total / capacity)
    assert len(bins) <= 11 / 9 * -(-sum(lengths) // capacity) + 1


def test_pack_by_length_refuses_a_sample_over_capacity():
    with pytest.raises(ValueError, match="capacity"):
        pack_by_length([3, 9], 8)


class TokenSamples(torch.utils.data.Dataset):
    """Token samples of varied lengths; every ``image_every``-th is flagged as an image sample."""

    def __init__(self, n: int = 24, image_every: int = 0, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows = []
        for _ in range(n):
            ids = torch.randint(1, VOCAB, (int(torch.randint(4, 13, (1,), generator=g)),),
                                generator=g)
            labels = ids.clone()
            labels[: len(ids) // 3] = IGNORE_INDEX  # a "prompt" part without loss
            self.rows.append({"input_ids": ids, "labels": labels, "images": None})
        self.image = [bool(image_every) and i % image_every == 0 for i in range(n)]
        self.loads = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        self.loads += 1
        return self.rows[index]

    def modality_lengths(self) -> list[tuple[bool, int]]:
        return [(img, len(r["input_ids"])) for img, r in zip(self.image, self.rows, strict=True)]


def test_packed_dataset_packs_text_only_samples_and_leaves_image_samples_alone():
    base = TokenSamples(n=30, image_every=4)
    packed = PackedDataset(base, max_length=32)
    text = [i for i in range(30) if not base.image[i]]
    packs = [item for item, (image, _) in zip(packed.items, packed.keys, strict=True)
             if not image]
    assert sorted(i for p in packs for i in p) == text
    assert len(packs) < len(text)
    assert [item for item, (image, _) in zip(packed.items, packed.keys, strict=True)
            if image] == [[i] for i in range(0, 30, 4)]
    for j, (image, length) in enumerate(packed.modality_lengths()):
        row = packed[j]
        assert len(row["input_ids"]) == length <= 32
        if image:
            assert "position_ids" not in row
            continue
        starts = [k for k, p in enumerate(row["position_ids"].tolist()) if p == 0]
        assert len(starts) == len(packed.items[j])
        assert all(row["labels"][k] == IGNORE_INDEX for k in starts)


def tiny_qwen2(attn: str) -> nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, attn_implementation=attn)
    return Qwen2ForCausalLM(config).eval()


def summed_loss(model: nn.Module, samples: list[dict]) -> float:
    """Sum over samples of (mean loss × supervised tokens): what a packed row's mean reproduces."""
    total = 0.0
    for s in samples:
        out = model(input_ids=s["input_ids"][None], labels=s["labels"][None], use_cache=False)
        total += out.loss.item() * int((s["labels"][1:] != IGNORE_INDEX).sum())
    return total


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_row_scores_like_its_samples_apart(attn):
    model = tiny_qwen2(attn)
    samples = TokenSamples(n=5).rows
    batch = PackedCollator(Collator(pad_token_id=0))([pack_samples(samples[:3]),
                                                      pack_samples(samples[3:])])
    assert batch["input_ids"].shape[0] == 2 and (batch["attention_mask"] == 0).any()  # padded
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], labels=batch["labels"],
                       position_ids=batch["position_ids"], use_cache=False)
        supervised = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        assert packed.loss.item() * supervised == pytest.approx(summed_loss(model, samples),
                                                                rel=1e-5)
        # the same row with positions counting through: samples see each other, loss differs
        leaky = model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False)
        assert abs(leaky.loss.item() - packed.loss.item()) > 1e-4


def test_engine_trains_on_packed_rows_with_the_separate_samples_loss(tmp_path):
    """Step 1's logged loss is the untrained model's loss on the first batch's samples apart."""
    cfg = TrainConfig(lr=1e-3, batch_size=2, max_iters=2, save_every=2, packing=True,
                      max_length=32, warmup_ratio=0.0)
    dataset = TokenSamples(n=24)
    model = tiny_qwen2("sdpa")
    packed = PackedDataset(dataset, cfg.max_length)
    first = next(iter(build_batch_sampler(packed, cfg)))
    with torch.no_grad():
        samples = [dataset.rows[i] for j in first for i in packed.items[j]]
        want = summed_loss(model, samples) / sum(int((s["labels"][1:] != IGNORE_INDEX).sum())
                                                 for s in samples)
    steps: dict[int, dict] = {}
    train(model, dataset=dataset, collate_fn=Collator(pad_token_id=0),
          param_groups=[{"params": list(model.parameters())}], cfg=cfg,
          work_dir=tmp_path / "logs", checkpoint_dir=tmp_path / "ckpt",
          on_step=lambda step, metrics: steps.setdefault(step, metrics))
    # one dropout-free forward in train mode; the first step has no update before it
    assert steps[1]["train/loss"] == pytest.approx(want, rel=1e-5)


class CumulativeLM(nn.Module):
    """Each position sees the running mean of all earlier embeddings, positions ignored."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask, labels, **unused):
        h = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1)[:, None]
        logits = self.head(h)
        return type("Out", (), {"loss": nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)})


def test_packing_is_refused_for_a_model_that_lets_packed_samples_mix(tmp_path):
    cfg = TrainConfig(batch_size=2, max_iters=2, save_every=2, packing=True, max_length=32)
    model = CumulativeLM()
    with pytest.raises(ConfigError, match="train.packing"):
        train(model, dataset=TokenSamples(n=8), collate_fn=Collator(pad_token_id=0),
              param_groups=[{"params": list(model.parameters())}], cfg=cfg,
              work_dir=tmp_path / "logs", checkpoint_dir=tmp_path / "ckpt",
              on_step=lambda step, metrics: None)


# --- resume without replaying the data loader -------------------------------------------------


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.embed = nn.Embedding(VOCAB, 8)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask, labels):
        logits = self.head(self.drop(self.embed(input_ids)))
        shifted = labels[:, 1:].flatten()
        return type("Out", (), {"loss": nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), shifted, ignore_index=IGNORE_INDEX)})


def _run(root: Path, dataset: TokenSamples, on_step) -> nn.Module:
    model = TinyLM()
    cfg = TrainConfig(lr=1e-2, batch_size=3, grad_accum=2, max_iters=12, save_every=4,
                      keep_last_n=3, warmup_ratio=0.2)
    train(model, dataset=dataset, collate_fn=Collator(pad_token_id=0),
          param_groups=[{"params": list(model.parameters())}], cfg=cfg,
          work_dir=root / "logs", checkpoint_dir=root / "ckpt", on_step=on_step)
    return model


def test_resume_skips_trained_batches_without_loading_them(tmp_path):
    full: dict[int, float] = {}
    reference = _run(tmp_path / "a", TokenSamples(image_every=3),
                     lambda step, m: full.setdefault(step, m["train/loss"]))

    def stop_at_10(step, metrics):
        if step == 10:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", TokenSamples(image_every=3), stop_at_10)
    dataset = TokenSamples(image_every=3)
    resumed: dict[int, float] = {}
    model = _run(tmp_path / "b", dataset, lambda step, m: resumed.setdefault(step, m["train/loss"]))

    assert sorted(resumed) == [9, 10, 11, 12]  # from iter_8
    sampler = LengthGroupedBatchSampler(dataset.modality_lengths(), batch_size=3, seed=0)
    assert dataset.loads == sum(len(b) for b in take(sampler, 12)[8:])  # none for the replay
    for step, loss in resumed.items():
        assert loss == pytest.approx(full[step], abs=1e-6), step
    for mine, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
    rng = torch.load(tmp_path / "b" / "ckpt" / "iter_12" / "rng.pt", weights_only=True)
    assert rng["sampler"] == {"kind": "length_grouped", "seed": 0, "batch_size": 3,
                              "batches_per_epoch": 9, "batches": 12, "epoch": 1, "offset": 3,
                              "megabatch": 50}


# --- the schedule the engine builds -----------------------------------------------------------


def test_a_one_iteration_warmup_does_not_leave_the_rate_at_its_floor(tmp_path):
    """mmengine's LinearLR over one iteration never ramps up: the engine drops it instead."""
    lrs: dict[int, float] = {}
    model = TinyLM()
    cfg = TrainConfig(lr=1e-2, batch_size=4, max_iters=5, save_every=5, warmup_ratio=0.2)
    train(model, dataset=TokenSamples(n=8), collate_fn=Collator(pad_token_id=0),
          param_groups=[{"params": list(model.parameters())}], cfg=cfg,
          work_dir=tmp_path / "logs", checkpoint_dir=tmp_path / "ckpt",
          on_step=lambda step, m: lrs.setdefault(step, m["train/lr"]))
    cosine = [0.5 * 1e-2 * (1 + math.cos(math.pi * i / 5)) for i in range(5)]
    assert [lrs[s] for s in range(1, 6)] == pytest.approx(cosine)

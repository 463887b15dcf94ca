from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vlmtune.data.collate import Collator, ConversationDataset
from vlmtune.data.images import build_image_processor
from vlmtune.data.templates import IGNORE_INDEX, INTERNLM2
from vlmtune.data.vision import InternVLTiles
from vlmtune.errors import DataError

TILE, TOKENS = 28, 4  # wide.png (56x28) → 2 tiles + thumbnail; square.png → 1 tile


def record(i, image, question="<image>\n图中的菜是什么？", answer="北京烤鸭"):
    rec = {"id": f"r{i}", "meta": {}, "conversations": [
        {"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
    return rec


@pytest.fixture
def make(tmp_path, tiny_tokenizer):
    """make(records | raw text, max_length) -> ConversationDataset over tmp_path/images."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (56, 28), (10, 200, 30)).save(images / "wide.png")
    Image.new("RGB", (28, 28), (90, 20, 130)).save(images / "square.png")
    processor = build_image_processor(tile_size=TILE, max_tiles=4)

    def build(records, max_length=1000):
        path = tmp_path / "data.jsonl"
        text = records if isinstance(records, str) else "\n".join(
            json.dumps(r, ensure_ascii=False) for r in records)
        path.write_text(text + "\n", encoding="utf-8")
        return ConversationDataset(path, images, tiny_tokenizer,
                                   InternVLTiles(processor, TOKENS), template=INTERNLM2,
                                   max_length=max_length)

    return build


def count(ids, tokenizer, token):
    return int((ids == tokenizer.convert_tokens_to_ids(token)).sum())


def test_samples(make, tiny_tokenizer):
    ds = make([
        record(0, "wide.png"),
        record(1, ["square.png", "wide.png"], question="<image> and <image>: same dish?"),
        record(2, None, question="图中的菜是什么？"),
    ])
    assert len(ds) == 3
    for i, tiles in enumerate([3, 4, 0]):
        sample = ds[i]
        assert sample["input_ids"].dtype == sample["labels"].dtype == torch.long
        assert sample["input_ids"].shape == sample["labels"].shape
        assert count(sample["input_ids"], tiny_tokenizer, "<IMG_CONTEXT>") == tiles * TOKENS
        assert count(sample["labels"], tiny_tokenizer, "<IMG_CONTEXT>") == 0
        if tiles:
            assert sample["images"]["pixel_values"].shape == (tiles, 3, TILE, TILE)
            assert sample["images"]["pixel_values"].dtype == torch.float32
        else:
            assert sample["images"] is None
    supervised = ds[0]["labels"][ds[0]["labels"] != IGNORE_INDEX].tolist()
    assert tiny_tokenizer.decode(supervised) == "北京烤鸭<|im_end|>"


def test_truncation_keeps_image_blocks(make, tiny_tokenizer):
    full = make([record(0, "wide.png", answer="北京烤鸭 " * 20)])[0]
    image_end = int((full["input_ids"] == tiny_tokenizer.convert_tokens_to_ids("</img>"))
                    .nonzero().max()) + 1
    limit = len(full["input_ids"]) - 5
    ds = make([record(0, "wide.png", answer="北京烤鸭 " * 20)], max_length=limit)
    cut = ds[0]
    assert len(cut["input_ids"]) == limit and ds.num_truncated == 1
    assert torch.equal(cut["input_ids"], full["input_ids"][:limit])
    assert torch.equal(cut["labels"], full["labels"][:limit])
    assert count(cut["input_ids"], tiny_tokenizer, "<IMG_CONTEXT>") == 3 * TOKENS

    first_label = int((full["labels"] != IGNORE_INDEX).nonzero().min())
    for too_short in (image_end - 1, first_label):  # cuts an image block / leaves no reply
        with pytest.raises(DataError) as info:
            make([record(0, "wide.png")], max_length=too_short)[0]
        assert (info.value.reason, info.value.line) == ("too_long", 1)


def test_image_tokens_in_text_are_refused(make):
    ds = make([record(0, "wide.png", question="<image> <IMG_CONTEXT>")])
    with pytest.raises(DataError) as info:
        ds[0]
    assert info.value.reason == "image_token_mismatch"


def test_bad_records(make):
    cases = [
        ([record(0, "../x.png")], "bad_image_path"),
        ([record(0, "/etc/passwd")], "bad_image_path"),
        ([record(0, "absent.png")], "missing_image"),
        ([record(0, None)], "image_count_mismatch"),
        ([record(0, "wide.png", question="no placeholder")], "image_count_mismatch"),
        ([record(0, 3)], "bad_record"),
    ]
    for records, reason in cases:
        with pytest.raises(DataError) as info:
            make(records)
        assert info.value.reason == reason
        assert info.value.line == 1
    with pytest.raises(DataError) as info:
        make(json.dumps(record(0, "wide.png")) + "\n{broken")
    assert (info.value.reason, info.value.line) == ("bad_json", 2)
    assert info.value.file.endswith("data.jsonl")


def test_collator_pads(make, tiny_tokenizer):
    ds = make([record(0, "wide.png"), record(1, None, question="q", answer="a"),
               record(2, "square.png")])
    samples = [ds[0], ds[1], ds[2]]
    pad = tiny_tokenizer.pad_token_id
    batch = Collator(pad)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == batch["labels"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, (sample, n) in enumerate(zip(samples, lengths, strict=True)):
        assert torch.equal(batch["input_ids"][row, :n], sample["input_ids"])
        assert torch.equal(batch["labels"][row, :n], sample["labels"])
        assert (batch["input_ids"][row, n:] == pad).all()
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    assert torch.equal(batch["pixel_values"],
                       torch.cat([samples[0]["images"]["pixel_values"],
                                  samples[2]["images"]["pixel_values"]]))

    text_only = Collator(pad)([ds[1]])
    assert "pixel_values" not in text_only
    assert set(text_only) == {"input_ids", "attention_mask", "labels"}


@pytest.mark.parametrize("kind", ["internlm2", "llama", "qwen2"])
def test_bos_once_first_and_kept_by_truncation(tmp_path, tokenizer_kinds, kind):
    tok = tokenizer_kinds[kind]
    Image.new("RGB", (56, 28)).save(tmp_path / "wide.png")
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record(0, "wide.png", answer="北京烤鸭 " * 20),
                               ensure_ascii=False) + "\n", encoding="utf-8")
    images = InternVLTiles(build_image_processor(tile_size=TILE, max_tiles=4), TOKENS)
    full = ConversationDataset(path, tmp_path, tok, images, template=INTERNLM2,
                               max_length=4000).encode(0)
    cut = ConversationDataset(path, tmp_path, tok, images, template=INTERNLM2,
                              max_length=len(full.input_ids) - 5).encode(0)
    for sample in (full, cut):
        if kind == "qwen2":
            assert tok.bos_token_id is None
        else:
            assert sample.input_ids[0] == tok.bos_token_id and sample.labels[0] == IGNORE_INDEX
            assert sample.input_ids.count(tok.bos_token_id) == 1
    assert (full.truncated, cut.truncated) == (False, True)
    assert cut.full_length == len(full.input_ids) and cut.images.extra["tiles"] == [3]

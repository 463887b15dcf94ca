"""``vlmtune preview`` on model directories shaped like the real releases: BOS where each
tokenizer puts it, labels only on the assistant's tokens + end marker for every template,
InternVL tiles as dynamic_preprocess (1920×1080 → 9 on the converter-shaped checkpoint)."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from tests.fixtures.checkpoints import internvl_hf_checkpoint

from vlmtune.data.templates import IGNORE_INDEX, TEMPLATES, get_template

SIZES = {"wide": (1920, 1080), "photo": (800, 600), "square": (448, 448)}
# Tiles by InternVL's published rule (REFERENCE.md worked examples), max 12.
EXPECTED_TILES = {"wide": 9, "photo": 13, "square": 1}
KEYS = {"split", "id", "input_ids", "labels", "tiles", "image_tokens", "bos", "template"}


def write_dataset(root, sizes):
    records = []
    for i, (name, size) in enumerate(sizes.items()):
        Image.new("RGB", size, (40 * i, 100, 200)).save(root / f"{name}.png")
        for j in range(2):
            turns = [{"from": "human", "value": "<image>\nWhat dish is shown in the picture?"},
                     {"from": "gpt", "value": "Peking duck."}]
            if j:
                turns += [{"from": "human", "value": "图中的菜是什么？"},
                          {"from": "gpt", "value": "我选择（A)。北京"}]
            records.append({"id": f"{name}-{j}", "image": f"{name}.png", "conversations": turns})
    (root / "data.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                             for r in records), encoding="utf-8")
    return root, {r["id"]: r for r in records}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("preview_data"), SIZES)


@pytest.fixture(scope="module")
def small_dataset_dir(tmp_path_factory):
    """Square images (one tile each): the same names, so the same split."""
    return write_dataset(tmp_path_factory.mktemp("preview_small"),
                         {name: (64, 64) for name in SIZES})


@pytest.fixture(scope="module")
def checkpoints(internvl_hf_dir, tokenizer_kinds, tmp_path_factory):
    """InternVL checkpoints (converter-shaped processor) with each tokenizer kind: InternLM2
    (InternVL2-2B/8B), Llama (a vicuna LLM), Qwen2 (InternVL2-1B)."""
    root = tmp_path_factory.mktemp("kind_checkpoints")
    return {"internlm2": internvl_hf_dir,
            "llama": internvl_hf_checkpoint(root / "llama", tokenizer_kinds["llama"]),
            "qwen2": internvl_hf_checkpoint(root / "qwen2", tokenizer_kinds["qwen2"])}


def overrides(model_dir, data_root, tmp_path, *extra):
    return ["model=internvl2_2b", f"model.path={model_dir}", "model.build=null",
            "model.dtype=float32", "dataset=llava_example", f"dataset.root={data_root}",
            "dataset.data_file=data.jsonl", "dataset.heldout_fraction=0.5",
            "dataset.split_seed=2", "train.max_length=8192", "preview.n=10",
            f"cache_dir={tmp_path / 'cache'}", f"output_root={tmp_path / 'out'}", *extra]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_preview_writes_json_lines(checkpoints, dataset_dir, tmp_path, monkeypatch, capsys):
    from vlmtune.cli import main

    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")
    data_root, records = dataset_dir
    out = tmp_path / "preview.jsonl"
    assert main(["preview", *overrides(checkpoints["internlm2"], data_root, tmp_path),
                 f"preview.json={out}"]) == 0
    rows = read_jsonl(out)
    assert {r["split"] for r in rows} == {"train", "heldout"}
    assert sorted(r["id"] for r in rows) == sorted(records)
    printed = capsys.readouterr().out
    assert "<IMG_CONTEXT>×2304" in printed  # 9 tiles × 256, collapsed
    for row in rows:
        assert set(row) == KEYS
        name = row["id"].split("-")[0]
        assert row["tiles"] == [EXPECTED_TILES[name]], row["id"]
        assert row["image_tokens"] == 256 * EXPECTED_TILES[name]
        assert row["bos"] is True and row["input_ids"][0] == 1  # <s>
        assert row["template"] == "internlm2"
        assert len(row["labels"]) == len(row["input_ids"])


@pytest.mark.parametrize("kind", ["internlm2", "llama", "qwen2"])
def test_bos_and_labels_for_every_template(checkpoints, small_dataset_dir, tokenizer_kinds,
                                           tmp_path, kind):
    from vlmtune.cli.preview import preview
    from vlmtune.config import compose_recipe, validate

    data_root, records = small_dataset_dir
    tok = tokenizer_kinds[kind]
    for name in sorted(TEMPLATES):
        out = tmp_path / f"{name}.jsonl"
        recipe = validate(compose_recipe(overrides(
            checkpoints[kind], data_root, tmp_path, f"model.chat_template={name}",
            f"preview.json={out}")))
        preview(recipe)
        rows = read_jsonl(out)
        assert len(rows) == len(records)
        end = get_template(name).end
        for row in rows:
            ids, labels = row["input_ids"], row["labels"]
            assert row["template"] == name
            if kind == "qwen2":
                assert row["bos"] is False and tok.bos_token_id is None
            else:
                assert row["bos"] is True and ids[0] == tok.bos_token_id
                assert ids.count(tok.bos_token_id) == 1 and labels[0] == IGNORE_INDEX
            replies = [t["value"] + end for t in records[row["id"]]["conversations"][1::2]]
            assert supervised_texts(tok, ids, labels) == replies, (kind, name, row["id"])


def supervised_texts(tok, ids, labels):
    runs, current = [], []
    for i, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == i
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tok.decode(run, skip_special_tokens=False).lstrip(" ") for run in runs]

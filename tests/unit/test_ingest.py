"""Ingest: adapters by card → validated, split JSONL + manifest; drops, lineage, cache, split."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.config.schema import DatasetConfig
from vlmtune.data.ingest import (
    ingest_dataset,
    open_source,
    source_fingerprint,
)
from vlmtune.data.synthetic import generate_foodie_synth
from vlmtune.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 dishes × 4 photos × 3 questions = 72 FoodieQA sivqa records."""
    root = tmp_path_factory.mktemp("synth") / "foodie"
    return generate_foodie_synth(root, seed=0, num_dishes=6, photos_per_dish=4)


@pytest.fixture
def foodie_copy(synth_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "foodie"
    shutil.copytree(synth_root, root)
    return root


def foodie_cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="foodie", adapter="foodieqa", root=str(root),
                         license="CC-BY-NC-ND-4.0", usage="evaluation", **kw)


def llava_cfg(root: Path, **kw) -> DatasetConfig:
    kw.setdefault("heldout_fraction", 0.3)
    kw.setdefault("data_file", "data.jsonl")
    return DatasetConfig(name="mine", adapter="llava", root=str(root), **kw)


def png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path, "PNG")


def llava_record(i: int, image: str | None = None) -> dict:
    return {"id": f"r{i}", "image": image or f"images/{i}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": f"c{i}"}]}


def write_llava(root: Path, records: list, images: range | list[int] = ()) -> Path:
    for i in images:
        png(root / "images" / f"{i}.png", (i * 7 % 256, 90, 200))
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    (root / "data.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- FoodieQA ---------------------------------------------------------------------------------


def test_foodieqa_end_to_end(synth_root: Path, tmp_path: Path) -> None:
    cfg = foodie_cfg(synth_root)
    result = ingest_dataset(cfg, tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "heldout.jsonl", "manifest.json", "train.jsonl"]  # no rejected.jsonl without drops
    train, heldout = read_jsonl(result.train_path), read_jsonl(result.heldout_path)
    m = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    assert m == result.manifest and not result.cache_hit
    assert m["counts"] == {"read": 72, "kept": 72, "train": len(train), "heldout": len(heldout),
                           "dropped": 0, "unassigned": 0}
    assert train and heldout and m["drops"] == {} and m["rejected"] is None
    assert (m["adapter"], m["task"], m["lang"], m["template"]) == ("foodieqa", "sivqa", "zh", 0)
    assert m["root"] == m["image_root"] == str(synth_root.absolute())
    assert m["card"] == {"name": "foodie", "license": "CC-BY-NC-ND-4.0", "usage": "evaluation"}
    assert (m["license"], m["usage"]) == ("CC-BY-NC-ND-4.0", "evaluation")
    assert m["split"]["method"] == "group_hash" and m["split"]["heldout_fraction"] == 0.25
    assert m["fingerprint"] == source_fingerprint(open_source(cfg))
    assert m["data_files"] == ["sivqa_tidy.json"]
    # grouped by photo: no photo has questions on both sides
    assert {r["image"] for r in train}.isdisjoint({r["image"] for r in heldout})
    assert all(r["meta"]["group"] == r["image"] for r in train + heldout)
    assert train[0]["conversations"][0]["value"].startswith("<image>\n")
    assert "，为（" in result.train_path.read_text(encoding="utf-8")  # not \u-escaped


def test_fingerprint_covers_records_and_image_bytes(foodie_copy: Path) -> None:
    cfg = foodie_cfg(foodie_copy)
    before = source_fingerprint(open_source(cfg))
    assert source_fingerprint(open_source(cfg)) == before
    (foodie_copy / "unrelated.txt").write_text("not part of the dataset")
    assert source_fingerprint(open_source(cfg)) == before
    image = foodie_copy / "images/jiaozi/0.jpg"
    image.write_bytes(image.read_bytes()[:-1] + b"\0")
    after_image = source_fingerprint(open_source(cfg))
    assert after_image != before
    recs = json.loads((foodie_copy / "sivqa_tidy.json").read_text(encoding="utf-8"))
    recs[0]["question"] += "?"
    (foodie_copy / "sivqa_tidy.json").write_text(json.dumps(recs, ensure_ascii=False), "utf-8")
    assert source_fingerprint(open_source(cfg)) not in (before, after_image)


def test_foodieqa_drops_broken_photos_and_answers(foodie_copy: Path, tmp_path: Path) -> None:
    (foodie_copy / "images/jiaozi/0.jpg").unlink()
    (foodie_copy / "images/mapodoufu/1.jpg").write_bytes(b"")
    data = (foodie_copy / "images/hongshaorou/2.jpg").read_bytes()
    (foodie_copy / "images/hongshaorou/2.jpg").write_bytes(data[: len(data) // 2])
    recs = json.loads((foodie_copy / "sivqa_tidy.json").read_text(encoding="utf-8"))
    recs[40]["answer"] = "7"
    (foodie_copy / "sivqa_tidy.json").write_text(json.dumps(recs, ensure_ascii=False), "utf-8")
    result = ingest_dataset(foodie_cfg(foodie_copy), tmp_path / "out")
    m = result.manifest
    assert m["drops"] == {"invalid_answer": 1, "missing_image": 3, "unreadable_image": 6}
    c = m["counts"]
    assert c["dropped"] == 10 and c["read"] == c["kept"] + c["dropped"] == 72
    rejected = read_jsonl(result.rejected_path)
    assert len(rejected) == 10 and m["rejected"] == "rejected.jsonl"
    assert {r["reason"] for r in rejected} == set(m["drops"])
    answer = next(r for r in rejected if r["reason"] == "invalid_answer")
    assert answer["line"] == 41 and answer["file"].endswith("sivqa_tidy.json")


def test_a_task_file_linked_from_outside_the_root_is_refused(foodie_copy, tmp_path) -> None:
    (foodie_copy / "sivqa_tidy.json").rename(tmp_path / "elsewhere.json")
    (foodie_copy / "sivqa_tidy.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(ConfigError, match="resolves outside dataset.root"):
        open_source(foodie_cfg(foodie_copy))


def test_missing_root_and_task_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.root") as info:
        ingest_dataset(foodie_cfg(tmp_path / "nope"), tmp_path / "out")
    assert info.value.reason == "missing_root"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="sivqa_tidy.json") as info:
        ingest_dataset(foodie_cfg(tmp_path / "empty"), tmp_path / "out")
    assert info.value.reason == "missing_file"


def test_image_dir_must_be_a_folder_inside_the_root(tmp_path: Path) -> None:
    root = write_llava(tmp_path / "ds", [llava_record(0)], [0])
    with pytest.raises(ConfigError, match=r"dataset\.image_dir='pics' is not a folder"):
        open_source(llava_cfg(root, image_dir="pics"))
    (root / "pics").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match=r"dataset\.image_dir='pics' resolves outside"):
        open_source(llava_cfg(root, image_dir="pics"))


# --- invalid records: drop / raise ------------------------------------------------------------


def broken_llava(root: Path, outside: Path) -> Path:
    """12 good records and one of each: bad JSON, missing image, symlink out of the root,
    '..' path, bad roles, duplicate id."""
    png(outside / "secret.png")
    records: list = [llava_record(i) for i in range(12)]
    records[3:3] = ["{not json"]  # line 4
    records.append(llava_record(20, "images/none.png"))
    records.append(llava_record(21, "images/link.png"))
    records.append(llava_record(22, "../outside/secret.png"))
    records.append({**llava_record(23), "conversations": [{"from": "gpt", "value": "hi"}]})
    records.append(llava_record(0))
    write_llava(root, records, range(12))
    (root / "images/link.png").symlink_to(outside / "secret.png")
    return root


def test_drop_mode_writes_every_rejected_record_with_its_reason(tmp_path: Path) -> None:
    root = broken_llava(tmp_path / "ds", tmp_path / "outside")
    result = ingest_dataset(llava_cfg(root), tmp_path / "out")
    m = result.manifest
    assert m["drops"] == {"bad_json": 1, "bad_roles": 1, "duplicate_id": 1, "missing_image": 1,
                          "path_escape": 2}
    assert m["counts"]["read"] == 18 and m["counts"]["kept"] == 12
    rejected = read_jsonl(result.rejected_path)
    assert [(r["line"], r["reason"]) for r in rejected] == [
        (4, "bad_json"), (14, "missing_image"), (15, "path_escape"), (16, "path_escape"),
        (17, "bad_roles"), (18, "duplicate_id")]
    assert all(r["file"] == str(root / "data.jsonl") and r["message"] for r in rejected)
    assert rejected[2]["record"]["image"] == "images/link.png"


def test_raise_mode_stops_at_the_first_bad_record(tmp_path: Path) -> None:
    root = broken_llava(tmp_path / "ds", tmp_path / "outside")
    with pytest.raises(DataError) as info:
        ingest_dataset(llava_cfg(root, on_invalid="raise"), tmp_path / "run" / "data")
    err = info.value
    assert (err.reason, err.line, err.file) == ("bad_json", 4, str(root / "data.jsonl"))
    assert "data.jsonl:4: [bad_json]" in str(err)
    assert "hint:" in str(err) and "dataset.on_invalid=drop" in str(err)
    assert not (tmp_path / "run" / "data").exists()
    assert list((tmp_path / "run").iterdir()) == []  # the work folder is gone too


def test_symlink_out_of_the_root_is_neither_read_nor_fingerprinted(tmp_path: Path) -> None:
    root = write_llava(tmp_path / "ds", [llava_record(i) for i in range(6)], range(6))
    (root / "images/0.png").unlink()
    png(tmp_path / "outside.png")
    (root / "images/0.png").symlink_to(tmp_path / "outside.png")
    cfg = llava_cfg(root)
    before = source_fingerprint(open_source(cfg))
    png(tmp_path / "outside.png", (1, 2, 3))
    assert source_fingerprint(open_source(cfg)) == before
    assert ingest_dataset(cfg, tmp_path / "out").manifest["drops"] == {"path_escape": 1}
    (tmp_path / "data.jsonl").write_text(json.dumps(llava_record(9)) + "\n")
    os.symlink(tmp_path / "data.jsonl", root / "linked.jsonl")
    with pytest.raises(ConfigError, match=r"dataset\.data_file='linked.jsonl' resolves outside"):
        open_source(llava_cfg(root, data_file="linked.jsonl"))


def test_image_limits_and_max_tokens_come_from_the_card(tmp_path: Path) -> None:
    root = write_llava(tmp_path / "ds", [llava_record(i) for i in range(8)], range(8))
    Image.new("RGB", (40, 16)).save(root / "images/7.png")
    long = llava_record(8)
    long["conversations"][1]["value"] = "word " * 50
    write_llava(root, [llava_record(i) for i in range(8)] + [long], [8])
    cfg = llava_cfg(root, max_image_side=32, max_tokens=20)

    def count_tokens(rec: dict) -> int:
        return sum(len(t["value"].split()) for t in rec["conversations"])

    m = ingest_dataset(cfg, tmp_path / "out", count_tokens=count_tokens).manifest
    assert m["drops"] == {"image_too_large": 1, "too_long": 1}
    assert m["token_check"] == {"max_tokens": 20, "status": "checked"}
    # without a counter (no model yet) the limit is not applied, and the manifest says so
    m = ingest_dataset(cfg, tmp_path / "out2").manifest
    assert m["drops"] == {"image_too_large": 1}
    assert m["token_check"]["status"] == "not checked"


# --- split ------------------------------------------------------------------------------------


def test_adding_records_keeps_every_earlier_record_on_its_side(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    first = [llava_record(i, f"images/{i // 2}.png") for i in range(40)]
    write_llava(root, first, range(20))
    before = ingest_dataset(llava_cfg(root), tmp_path / "a").manifest
    sides = {r["id"]: side for side in ("train", "heldout")
             for r in read_jsonl(tmp_path / "a" / f"{side}.jsonl")}
    more = first + [llava_record(i, f"images/{i // 2}.png") for i in range(40, 100)]
    write_llava(root, more, range(20, 50))
    after = ingest_dataset(llava_cfg(root), tmp_path / "b").manifest
    assert after["fingerprint"] != before["fingerprint"]
    now = {r["id"]: side for side in ("train", "heldout")
           for r in read_jsonl(tmp_path / "b" / f"{side}.jsonl")}
    assert len(now) == 100 and all(now[rid] == side for rid, side in sides.items())
    assert 0.1 < after["counts"]["heldout"] / 100 < 0.5


def test_group_key_split_column_and_split_file(tmp_path: Path) -> None:
    records = []
    for i in range(12):
        rec = llava_record(i, f"images/{i}.png")
        rec["meta"] = {"album": f"a{i % 6}", "part": "test" if i < 4 else "train"}
        records.append(rec)
    root = write_llava(tmp_path / "ds", records, range(12))

    def sides(cfg: DatasetConfig, out: str) -> dict[str, list[str]]:
        ingest_dataset(cfg, tmp_path / out)
        return {s: [r["id"] for r in read_jsonl(tmp_path / out / f"{s}.jsonl")]
                for s in ("train", "heldout")}

    by_album = sides(llava_cfg(root, group_key="meta.album", heldout_fraction=0.5), "g")
    albums = {side: {int(rid[1:]) % 6 for rid in ids} for side, ids in by_album.items()}
    assert albums["train"].isdisjoint(albums["heldout"])
    assert sides(llava_cfg(root, split_column="part"), "c")["heldout"] == ["r0", "r1", "r2", "r3"]
    (root / "split.json").write_text(json.dumps({"train": ["r5", "r6"], "validation": ["r7"]}))
    result = ingest_dataset(llava_cfg(root, split_file="split.json"), tmp_path / "f")
    assert (result.manifest["counts"]["train"], result.manifest["counts"]["heldout"]) == (2, 1)
    assert result.manifest["counts"]["unassigned"] == 9
    assert "split.json" in result.manifest["data_files"]
    with pytest.raises(DataError, match="group key 'meta.nothing' is missing") as info:
        ingest_dataset(llava_cfg(root, group_key="meta.nothing", on_invalid="raise"),
                       tmp_path / "x")
    assert (info.value.reason, info.value.line) == ("bad_record", 1)


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    root = write_llava(tmp_path / "ds", [llava_record(0)], [0])
    with pytest.raises(DataError) as info:
        ingest_dataset(llava_cfg(root), tmp_path / "out")
    assert info.value.reason == "empty_split"


# --- cache ------------------------------------------------------------------------------------


def test_unchanged_reingest_is_a_cache_hit(foodie_copy: Path, tmp_path: Path, caplog) -> None:
    cfg, cache = foodie_cfg(foodie_copy), tmp_path / "cache"
    first = ingest_dataset(cfg, tmp_path / "a", cache_dir=cache)
    with caplog.at_level("INFO", logger="vlmtune"):
        again = ingest_dataset(cfg, tmp_path / "b", cache_dir=cache)
    assert not first.cache_hit and again.cache_hit and "cache hit" in caplog.text
    for name in ("train.jsonl", "heldout.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # another option or changed content: a miss
    assert not ingest_dataset(foodie_cfg(foodie_copy, split_seed=1), tmp_path / "c",
                              cache_dir=cache).cache_hit
    (foodie_copy / "images/jiaozi/0.jpg").unlink()
    changed = ingest_dataset(cfg, tmp_path / "d", cache_dir=cache)
    assert not changed.cache_hit and changed.manifest["drops"] == {"missing_image": 3}
    assert ingest_dataset(cfg, tmp_path / "d", cache_dir=cache).rejected_path is not None


# --- card validation --------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "message"), [
    ({"adapter": "llava"}, r"dataset\.data_file is required"),
    ({"adapter": "llava", "data_file": "../x.jsonl"}, r"dataset\.data_file='\.\./x\.jsonl'"),
    ({"image_dir": "/abs"}, r"dataset\.image_dir='/abs' must be a relative path"),
    ({"split_column": "s", "split_file": "f.json"}, "at most one of"),
    ({"max_tokens": 0}, r"dataset\.max_tokens=0"),
    ({"min_image_side": 64, "max_image_side": 32}, r"dataset\.min_image_side=64"),
    ({"adapter": "parquet"}, r"dataset\.adapter='parquet'"),
])
def test_card_values_are_checked_with_the_key_named(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DatasetConfig(root="/data", **kw)

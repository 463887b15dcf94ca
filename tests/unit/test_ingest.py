"""FoodieQA ingest end to end on synthetic data: counts, manifest, split, invalid records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vlmtune.data.fingerprint import fingerprint_files
from vlmtune.data.ingest import ingest_foodieqa, sivqa_source_files
from vlmtune.data.synthetic import generate_foodie_synth
from vlmtune.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_foodie_synth(tmp_path_factory.mktemp("synth") / "foodie", seed=0)


@pytest.fixture
def broken_root(synth_root: Path, tmp_path: Path) -> Path:
    """A copy where one photo is missing, one is zero bytes and one is a truncated JPEG."""
    root = tmp_path / "broken"
    shutil.copytree(synth_root, root)
    (root / "images/jiaozi/0.jpg").unlink()
    (root / "images/mapodoufu/1.jpg").write_bytes(b"")
    data = (root / "images/hongshaorou/2.jpg").read_bytes()
    (root / "images/hongshaorou/2.jpg").write_bytes(data[: len(data) // 2])
    return root


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_end_to_end(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    card = {"license": "CC-BY-NC-ND-4.0", "usage": "evaluation"}
    result = ingest_foodieqa(synth_root, out, lang="zh", card=card)
    assert sorted(p.name for p in out.iterdir()) == [
        "heldout.jsonl",
        "manifest.json",
        "train.jsonl",
    ]
    train, heldout = _read_jsonl(result.train_path), _read_jsonl(result.heldout_path)
    m = json.loads(result.manifest_path.read_text(encoding="utf-8"))
    assert m == result.manifest
    assert m["counts"] == {"read": 180, "kept": 180, "train": len(train),
                           "heldout": len(heldout), "dropped": 0}  # fmt: skip
    assert len(train) + len(heldout) == 180 and heldout
    assert m["drops"] == {}
    assert (m["adapter"], m["task"], m["lang"], m["template"]) == ("foodieqa", "sivqa", "zh", 0)
    assert m["source"] == m["image_root"] == str(synth_root.absolute())
    assert m["split"] == {"group_key": "food_meta.food_file", "heldout_fraction": 0.25, "seed": 0}
    assert (m["license"], m["usage"]) == ("CC-BY-NC-ND-4.0", "evaluation")
    files = sivqa_source_files(synth_root)
    assert files[0] == "sivqa_tidy.json" and len(files) == 61
    assert m["fingerprint"] == fingerprint_files(synth_root, files)
    assert {r["image"] for r in train}.isdisjoint({r["image"] for r in heldout})
    rec = train[0]
    assert rec["conversations"][0]["value"].startswith("<image>\n")
    assert (Path(m["image_root"]) / rec["image"]).is_file()
    assert "，为（" in (out / "train.jsonl").read_text(encoding="utf-8")  # not \u-escaped


def test_fingerprint_given_is_used_and_changes_with_content(synth_root: Path, tmp_path: Path):
    given = ingest_foodieqa(synth_root, tmp_path / "a", source_fingerprint="abc")
    assert given.manifest["fingerprint"] == "abc"
    root = tmp_path / "copy"
    shutil.copytree(synth_root, root)
    before = fingerprint_files(root, sivqa_source_files(root))
    (root / "images/jiaozi/0.jpg").write_bytes(b"changed")
    assert fingerprint_files(root, sivqa_source_files(root)) != before


BROKEN = {"images/jiaozi/0.jpg", "images/mapodoufu/1.jpg", "images/hongshaorou/2.jpg"}


def test_drop_mode_counts_every_drop(broken_root: Path, tmp_path: Path) -> None:
    recs = json.loads((broken_root / "sivqa_tidy.json").read_text(encoding="utf-8"))
    bad = next(r for r in recs if r["food_meta"]["food_file"] not in BROKEN)
    bad["answer"] = "7"
    (broken_root / "sivqa_tidy.json").write_text(json.dumps(recs, ensure_ascii=False), "utf-8")
    m = ingest_foodieqa(broken_root, tmp_path / "out", on_invalid="drop").manifest
    # 3 questions per photo: one missing photo, one zero-byte and one truncated JPEG
    assert m["drops"] == {"invalid_answer": 1, "missing_image": 3, "unreadable_image": 6}
    c = m["counts"]
    assert c["dropped"] == 10 and c["read"] == c["kept"] + c["dropped"] == 180
    written = [len(_read_jsonl(tmp_path / "out" / f)) for f in ("train.jsonl", "heldout.jsonl")]
    assert c["kept"] == c["train"] + c["heldout"] == sum(written)


@pytest.mark.parametrize(
    ("photo", "reason"),
    [("images/jiaozi/0.jpg", "missing_image"), ("images/mapodoufu/1.jpg", "unreadable_image"),
     ("images/hongshaorou/2.jpg", "unreadable_image")],
)  # fmt: skip
def test_raise_mode_names_file_line_reason(
    broken_root: Path, tmp_path: Path, photo: str, reason: str
) -> None:
    recs = json.loads((broken_root / "sivqa_tidy.json").read_text(encoding="utf-8"))
    only = [r for r in recs if r["food_meta"]["food_file"] in {photo, "images/dandanmian/0.jpg"}]
    only.sort(key=lambda r: r["food_meta"]["food_file"] == photo)  # a good photo's 3 first
    (broken_root / "sivqa_tidy.json").write_text(json.dumps(only, ensure_ascii=False), "utf-8")
    with pytest.raises(DataError) as info:
        ingest_foodieqa(broken_root, tmp_path / "out", on_invalid="raise")
    err = info.value
    assert (err.reason, err.line) == (reason, 4) and err.file.endswith("sivqa_tidy.json")
    assert f"sivqa_tidy.json:4: [{reason}]" in str(err) and photo in str(err)


def test_raise_mode_invalid_answer_line(synth_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(synth_root, root)
    recs = json.loads((root / "sivqa_tidy.json").read_text(encoding="utf-8"))
    recs[41]["answer"] = "-1"
    (root / "sivqa_tidy.json").write_text(json.dumps(recs, ensure_ascii=False), "utf-8")
    with pytest.raises(DataError) as info:
        ingest_foodieqa(root, tmp_path / "out", on_invalid="raise")
    assert (info.value.reason, info.value.line) == ("invalid_answer", 42)
    assert not (tmp_path / "out").exists()


def test_missing_root_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dataset\.root") as info:
        ingest_foodieqa(tmp_path / "nope", tmp_path / "out")
    assert info.value.reason == "missing_root" and "nope" in str(info.value)


def test_missing_task_file_bad_json_and_unknown_task(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    with pytest.raises(DataError, match="sivqa_tidy.json"):
        ingest_foodieqa(root, tmp_path / "out")
    (root / "sivqa_tidy.json").write_text('[\n  {"a": 1},\n  {oops}\n]', encoding="utf-8")
    with pytest.raises(DataError) as info:
        ingest_foodieqa(root, tmp_path / "out")
    assert (info.value.reason, info.value.line) == ("bad_json", 3)
    with pytest.raises(ConfigError, match=r"dataset\.task"):
        ingest_foodieqa(root, tmp_path / "out", task="mivqa")

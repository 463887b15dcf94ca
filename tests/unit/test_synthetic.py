"""The synthetic FoodieQA generator writes the real on-disk shape, deterministically."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.data.synthetic import DISHES, generate_foodie_synth, text_corpus
from vlmtune.errors import ConfigError

FIELDS = {
    "question", "question_en", "choices", "choices_en", "answer", "question_type",
    "food_name", "question_id", "food_meta",
}  # fmt: skip
META_FIELDS = {"main_ingredient", "id", "food_name", "food_type", "food_location", "food_file"}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_real_shape(tmp_path: Path) -> None:
    root = generate_foodie_synth(tmp_path / "foodie", seed=3)
    records = json.loads((root / "sivqa_tidy.json").read_text(encoding="utf-8"))
    assert isinstance(records, list) and len(records) == 10 * 6 * 3
    for rec in records:
        assert set(rec) == FIELDS and set(rec["food_meta"]) == META_FIELDS
        assert rec["answer"] in {"0", "1", "2", "3"}
        assert len(rec["choices"]) == len(rec["choices_en"]) == 4
        assert len(set(rec["choices"])) == 4
        idx = int(rec["answer"])
        assert (root / rec["food_meta"]["food_file"]).is_file()
        if rec["question_type"] == "food-name":
            assert rec["choices"][idx] == rec["food_name"] == rec["food_meta"]["food_name"]
        if rec["question_type"] == "main-ingredient":
            assert rec["choices"][idx] in rec["food_meta"]["main_ingredient"]
    assert len({r["question_id"] for r in records}) == len(records)
    assert Counter(r["question_type"] for r in records) == {
        "food-name": 60, "main-ingredient": 60, "region": 60,
    }  # fmt: skip
    assert len(Counter(r["answer"] for r in records)) == 4  # shuffled, not a constant index
    assert len({r["food_name"] for r in records}) >= 8
    photos = {r["food_meta"]["food_file"] for r in records}
    assert len(photos) == 60
    sizes = {Image.open(root / p).size for p in photos}
    assert len(sizes) >= 3 and all(max(s) <= 128 for s in sizes)
    # zh and en: every Chinese choice has an English counterpart that differs
    assert any("饺子" in r["choices"] and "dumplings" in r["choices_en"] for r in records)


def test_deterministic_and_second_call_is_noop(tmp_path: Path) -> None:
    a = generate_foodie_synth(tmp_path / "a", seed=7, num_dishes=5, photos_per_dish=2)
    b = generate_foodie_synth(tmp_path / "b", seed=7, num_dishes=5, photos_per_dish=2)
    assert _tree(a) == _tree(b)
    marker_mtime = (a / ".synth.json").stat().st_mtime_ns
    before = _tree(a)
    generate_foodie_synth(a, seed=7, num_dishes=5, photos_per_dish=2)
    assert (a / ".synth.json").stat().st_mtime_ns == marker_mtime
    assert _tree(a) == before
    c = generate_foodie_synth(tmp_path / "c", seed=8, num_dishes=5, photos_per_dish=2)
    assert _tree(c)["sivqa_tidy.json"] != before["sivqa_tidy.json"]


def test_other_parameters_regenerate_in_place(tmp_path: Path) -> None:
    root = generate_foodie_synth(tmp_path / "d", num_dishes=4, photos_per_dish=1)
    generate_foodie_synth(root, num_dishes=6, photos_per_dish=2)
    records = json.loads((root / "sivqa_tidy.json").read_text(encoding="utf-8"))
    assert len(records) == 6 * 2 * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp dirs left behind


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        generate_foodie_synth(tmp_path / "real")


def test_too_many_dishes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_dishes"):
        generate_foodie_synth(tmp_path / "x", num_dishes=len(DISHES) + 1)


def test_dishes_are_distinguishable() -> None:
    assert len(DISHES) >= 10
    for attr in ("name", "ingredient", "region", "slug"):
        assert len({getattr(d, attr) for d in DISHES}) == len(DISHES), attr
    assert len({(d.colour, d.pattern) for d in DISHES}) == len(DISHES)


def test_text_corpus_covers_questions_and_choices(tmp_path: Path) -> None:
    root = generate_foodie_synth(tmp_path / "t", num_dishes=6, photos_per_dish=1)
    corpus = set(text_corpus(num_dishes=6))
    for rec in json.loads((root / "sivqa_tidy.json").read_text(encoding="utf-8")):
        assert {rec["question"], rec["question_en"]} <= corpus
        assert set(rec["choices"]) | set(rec["choices_en"]) <= corpus

"""Image paths: a record path that repeats dataset.image_dir is found; every image error shows
the resolved path tried; rejected.jsonl is written even when a split then comes out empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.config.schema import DatasetConfig
from vlmtune.data.ingest import ingest_dataset
from vlmtune.errors import DataError


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


def make_dataset(root: Path, images: list[str], files: list[str]) -> None:
    """``data.jsonl`` with one record per entry of ``images``; PNGs at ``files`` (in root)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (20 * i, 40, 90)).save(root / rel, "PNG")
    with (root / "data.jsonl").open("w") as fh:
        for i, image in enumerate(images):
            fh.write(json.dumps({"id": f"r{i}", "image": image, "conversations": [
                {"from": "human", "value": "<image>\nColour?"},
                {"from": "gpt", "value": f"c{i}"}]}) + "\n")


def cfg(root: Path, **kw) -> DatasetConfig:
    return DatasetConfig(name="mine", adapter="llava", root=str(root), data_file="data.jsonl",
                         heldout_fraction=0.3, **kw)


def test_paths_repeating_image_dir_are_found_and_rewritten(tmp_path):
    root = tmp_path / "data"
    names = [f"images/{i}.png" for i in range(10)]
    make_dataset(root, names, names)  # the README's own layout
    result = ingest_dataset(cfg(root, image_dir="images"), tmp_path / "out")
    counts = result.manifest["counts"]
    assert counts["dropped"] == 0 and counts["kept"] == 10
    rows = [json.loads(line) for split in ("train", "heldout")
            for line in (tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()]
    # kept relative to the image root (root/images), where training looks them up
    assert sorted(r["image"] for r in rows) == sorted(f"{i}.png" for i in range(10))
    assert all((root / "images" / r["image"]).is_file() for r in rows)


def test_missing_image_shows_the_resolved_path_and_a_hint(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, ["pics/0.png"], ["pics/0.png"])
    (root / "images").mkdir()
    with pytest.raises(DataError) as err:
        ingest_dataset(cfg(root, image_dir="images", on_invalid="raise"), tmp_path / "out")
    text = str(err.value)
    assert err.value.reason == "missing_image"
    assert str((root / "images" / "pics/0.png").resolve()) in text  # the path tried
    assert str((root / "pics/0.png").resolve()) in text  # where it is
    assert "dataset.image_dir='images'" in text


def test_rejected_jsonl_is_written_before_the_empty_split_error(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, [f"gone/{i}.png" for i in range(6)], [])
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"split is empty.*rejected\.jsonl") as err:
        ingest_dataset(cfg(root), out)
    assert err.value.reason == "empty_split"
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected] == ["missing_image"] * 6
    tried = str((root / "gone/0.png").resolve())
    assert tried in rejected[0]["message"]

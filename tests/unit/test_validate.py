"""The validator: a hostile dataset yields exact per-reason drop counts, nothing outside the image
root is ever opened, and raise mode names file, line and reason."""

from __future__ import annotations

import builtins
import io
import json
import os
import pathlib
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.data.adapters import csv_folder, llava
from vlmtune.data.validate import (
    REASONS,
    DropLog,
    ImageLimits,
    RecordValidator,
    check_answer_index,
    validate_records,
)
from vlmtune.errors import ConfigError, DataError


def conv(question: str = "<image>\n这是什么菜？", answer: str = "饺子。") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares a size in its header and holds no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def world(tmp_path: Path) -> dict:
    """root/ (the image root) with good and hostile images, and outside/secret.png beside it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    images = root / "images"
    images.mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (32, 32), "white").save(outside / "secret.png")  # valid: opening it passes
    Image.new("RGB", (32, 32), "orange").save(images / "ok.jpg", "JPEG")
    Image.new("RGB", (32, 24), "green").save(images / "ok.png")
    Image.new("RGB", (4, 4), "red").save(images / "tiny.png")
    Image.new("L", (16385, 8)).save(images / "wide.png")
    (images / "bomb.png").write_bytes(png_header(100_000, 100_000))
    (images / "empty.jpg").write_bytes(b"")
    (images / "notes.jpg").write_text("not an image", encoding="utf-8")
    rng = random.Random(0)
    noise = Image.frombytes("RGB", (96, 96), bytes(rng.getrandbits(8) for _ in range(96 * 96 * 3)))
    buf = io.BytesIO()
    noise.save(buf, "JPEG", quality=95)
    (images / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
    (images / "escape.png").symlink_to(outside / "secret.png")
    return {"root": root, "outside": outside, "secret": outside / "secret.png"}


def hostile_lines(world: dict) -> tuple[list[bytes], dict[str, int]]:
    """One JSONL dataset with every kind of rejection, and the expected drop counts."""
    secret = str(world["secret"])

    def rec(rid: str, image=None, conversations=None, **extra) -> bytes:
        r = {"id": rid, "conversations": conversations or conv()}
        if image is not None:
            r["image"] = image
        r.update(extra)
        return json.dumps(r, ensure_ascii=False).encode()

    text_only = conv("推荐一道川菜。", "回锅肉。")
    lines = [
        rec("ok1", "images/ok.jpg"),
        rec("ok2", ["images/ok.jpg", "images/ok.png"],
            conv("<image>\n<image>\n哪个是饺子？", "第一张。")),
        rec("ok3", conversations=text_only, meta={"choices": ["甲", "乙"], "answer_index": "1"}),
        b'{"id": "broken", ',
        b'{"id": "\xff\xfe", "conversations": []}',
        json.dumps({"id": "r1", "conversations": "hello"}).encode(),
        b"[1, 2, 3]",
        rec("m1", "images/nope.jpg"),
        rec("u1", "images/empty.jpg"),
        rec("u2", "images/trunc.jpg"),
        rec("u3", "images/notes.jpg"),
        rec("s1", "images/tiny.png"),
        rec("l1", "images/wide.png"),
        rec("l2", "images/bomb.png"),
        rec("e1", "../../etc/passwd"),
        rec("e2", secret),
        rec("e3", "images/escape.png"),
        rec("e4", "images/../../outside/secret.png"),
        rec("roles", conversations=list(reversed(text_only))),
        rec("empty", conversations=conv("推荐一道川菜。", "   ")),
        rec("count", "images/ok.jpg", conv("<image>\n<image>\n这是什么？")),
        rec("answer", conversations=text_only,
            meta={"choices": ["A", "B", "C", "D"], "answer_index": "4"}),
        rec("ok1", "images/ok.png"),
        rec("long", conversations=conv("讲讲这道菜。", "很长" * 200)),
    ]
    expected = {
        "bad_json": 2, "bad_record": 2, "missing_image": 1, "unreadable_image": 3,
        "image_too_small": 1, "image_too_large": 2, "path_escape": 4, "bad_roles": 1,
        "empty_turn": 1, "image_count_mismatch": 1, "invalid_answer": 1, "duplicate_id": 1,
        "too_long": 1,
    }
    return lines, expected


def count_chars(record: dict) -> int:
    return sum(len(t["value"]) for t in record["conversations"])


def make_validator(root: Path) -> RecordValidator:
    return RecordValidator(root, max_tokens=200, count_tokens=count_chars)


def write_hostile(world: dict) -> tuple[Path, dict[str, int]]:
    lines, expected = hostile_lines(world)
    path = world["root"] / "hostile.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected


def test_drop_mode_counts_every_reason_exactly(world):
    path, expected = write_hostile(world)
    log_path = world["root"] / "rejected.jsonl"
    with DropLog(log_path) as drops:
        kept = list(validate_records(llava.iter_records(path), make_validator(world["root"]),
                                     drops=drops))
    assert [r["id"] for r in kept] == ["ok1", "ok2", "ok3"]
    assert kept[2]["meta"]["answer_index"] == 1  # normalised from "1"
    assert drops.as_dict() == expected
    assert set(expected) == set(REASONS)

    logged = [json.loads(x) for x in log_path.read_text(encoding="utf-8").splitlines()]
    assert len(logged) == drops.total == sum(expected.values())
    assert all(e["file"] == str(path) for e in logged)
    by_line = {e["line"]: e for e in logged}
    assert by_line[5]["reason"] == "bad_json" and by_line[5]["record"] is None
    assert "not UTF-8" in by_line[5]["message"]
    assert by_line[17]["reason"] == "path_escape" and by_line[17]["record"]["id"] == "e3"
    assert by_line[23]["reason"] == "duplicate_id"


def test_no_file_outside_the_root_is_opened(world, monkeypatch):
    path, _ = write_hostile(world)
    opened: list[str] = []

    def note(target: object) -> None:
        if isinstance(target, str | bytes | os.PathLike):
            opened.append(os.fsdecode(target))
        elif hasattr(target, "name") and isinstance(target.name, str):
            opened.append(target.name)

    real_open, real_path_open, real_image_open = builtins.open, pathlib.Path.open, Image.open

    def spy_open(file, *args, **kwargs):
        note(file)
        return real_open(file, *args, **kwargs)

    def spy_path_open(self, *args, **kwargs):
        note(self)
        return real_path_open(self, *args, **kwargs)

    def spy_image_open(fp, *args, **kwargs):
        note(fp)
        return real_image_open(fp, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(pathlib.Path, "open", spy_path_open)
    monkeypatch.setattr(Image, "open", spy_image_open)
    list(validate_records(llava.iter_records(path), make_validator(world["root"])))
    monkeypatch.undo()

    root = world["root"].resolve()
    resolved = {Path(p).resolve() for p in opened}
    assert root / "images" / "ok.jpg" in resolved  # the spies saw the validator's opens
    assert all(p.is_relative_to(root) for p in resolved), sorted(map(str, resolved))
    assert world["secret"].resolve() not in resolved

    # the symlinked file is a valid image: a validator rooted above both accepts it
    wider = RecordValidator(world["root"].parent)
    linked = {"id": "x", "image": "root/images/escape.png", "conversations": conv()}
    assert wider.check(linked, file="f", line=1)["image"] == "root/images/escape.png"


def test_raise_mode_names_file_line_and_reason(world):
    path = world["root"] / "one.jsonl"
    good = json.dumps({"id": "a", "image": "images/ok.jpg", "conversations": conv()})
    bad = json.dumps({"id": "b", "image": "images/nope.jpg", "conversations": conv()})
    path.write_text(f"{good}\n{bad}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        list(validate_records(llava.iter_records(path), RecordValidator(world["root"]),
                              on_invalid="raise"))
    err = info.value
    assert (err.reason, err.file, err.line) == ("missing_image", str(path), 2)
    assert str(err).startswith(f"{path}:2: [missing_image] image 'images/nope.jpg'")
    assert "hint:" in str(err)

    path.write_bytes(good.encode() + b"\n" + b'{"id": "\xff"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: \[bad_json\] not UTF-8"):
        list(validate_records(llava.iter_records(path), RecordValidator(world["root"]),
                              on_invalid="raise"))


def test_hostile_csv_through_the_csv_adapter(world):
    path = world["root"] / "data.csv"
    path.write_bytes(
        b"id,image,question,answer\n"
        + "c1,ok.jpg,这是什么？,饺子\n".encode()
        + b"c2,ok.jpg,\xe8\xbf,x\n"
        + "c3,../../outside/secret.png,这是什么？,饺子\n".encode()
        + "c4,empty.jpg,这是什么？,饺子\n".encode()
        + "c5,ok.png,这是什么？,\n".encode()
        + "c1,ok.png,这是什么？,饺子\n".encode()
    )
    drops = DropLog()
    kept = list(validate_records(csv_folder.iter_records(path, image_dir="images"),
                                 RecordValidator(world["root"]), drops=drops))
    assert [r["id"] for r in kept] == ["c1"]
    assert drops.as_dict() == {"bad_json": 1, "duplicate_id": 1, "empty_turn": 1,
                               "path_escape": 1, "unreadable_image": 1}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ("not a dict", "bad_record"),
        ({"conversations": conv("hi")}, "bad_record"),
        ({"id": True, "conversations": conv("hi")}, "bad_record"),
        ({"id": "x", "conversations": []}, "bad_record"),
        ({"id": "x", "conversations": [{"from": "human"}]}, "bad_record"),
        ({"id": "x", "conversations": conv("hi"), "meta": []}, "bad_record"),
        ({"id": "x", "image": 3, "conversations": conv()}, "bad_record"),
        ({"id": "x", "image": "a\0b", "conversations": conv()}, "bad_record"),
        ({"id": "x", "conversations": conv("hi")[:1]}, "bad_roles"),
        ({"id": "x", "conversations": [{"from": "user", "value": "hi"},
                                       {"from": "gpt", "value": "yo"}]}, "bad_roles"),
        ({"id": "x", "conversations": conv("", "yo")}, "empty_turn"),
        ({"id": "x", "conversations": conv("hi", "<image>")}, "image_count_mismatch"),
        ({"id": "x", "image": "images/ok.jpg", "conversations": conv("hi")},
         "image_count_mismatch"),
        ({"id": "x", "image": "C:\\Windows\\x.png", "conversations": conv()}, "path_escape"),
        ({"id": "x", "image": "images\\..\\..\\x.png", "conversations": conv()}, "path_escape"),
        ({"id": "x", "image": "images", "conversations": conv()}, "missing_image"),
        ({"id": "x", "conversations": conv("hi"), "meta": {"answer_index": -1}},
         "invalid_answer"),
    ],
)
def test_single_records(world, record, reason):
    with pytest.raises(DataError) as info:
        RecordValidator(world["root"]).check(record, file="d.jsonl", line=7)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"d.jsonl:7: [{reason}]")


def test_valid_record_is_normalised(world):
    v = RecordValidator(world["root"])
    out = v.check({"id": 12, "image": [], "conversations": conv("hi"), "extra": 1},
                  file="f", line=1)
    assert out == {"id": "12", "conversations": conv("hi"), "meta": {}, "extra": 1}


def test_check_answer_index():
    assert check_answer_index("3", 4) == 3
    assert check_answer_index(0, 4) == 0
    assert check_answer_index("7", None) == 7
    for bad in ("4", 4, "-1", True, "٣", "1.0", None, "9" * 5000):
        with pytest.raises(DataError) as info:
            check_answer_index(bad, 4)
        assert info.value.reason == "invalid_answer"


def test_limits_and_token_settings_are_checked(world):
    with pytest.raises(ConfigError, match="min_side"):
        ImageLimits(min_side=0)
    with pytest.raises(ConfigError, match="count_tokens"):
        RecordValidator(world["root"], max_tokens=10)
    small = RecordValidator(world["root"], limits=ImageLimits(max_side=16))
    with pytest.raises(DataError, match="image_too_large"):
        small.check({"id": "x", "image": "images/ok.jpg", "conversations": conv()},
                    file="f", line=1)

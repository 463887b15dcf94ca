"""Whatever a record holds, the validator accepts it or raises DataError with a known reason."""

from __future__ import annotations

import base64
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmtune.data.adapters import sharegpt
from vlmtune.data.validate import IMAGE_TOKEN, REASONS, Problem, RecordValidator
from vlmtune.errors import DataError

SETTINGS = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

TRICKY = ["<image>", "<image>\n", "..", "../x.png", "../../etc/passwd", "/etc/passwd",
          "images/ok.png", "images/link.png", "images", "", " ", "C:\\x.png", "a\0b",
          "human", "gpt", "user", "assistant", "system", "data:image/png;base64,AAAA",
          "https://example.com/a.png", "file:///etc/passwd", "0", "4"]

leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.text(max_size=12), st.sampled_from(TRICKY),
)
json_values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.sampled_from(
            ["id", "image", "conversations", "from", "value", "meta", "choices",
             "answer_index"])), inner, max_size=4),
    ),
    max_leaves=12,
)
texts = st.one_of(st.text(max_size=10), st.sampled_from(TRICKY),
                  st.lists(st.sampled_from(["<image>", "图", "\n", "..", " "]), max_size=4)
                  .map("".join))
paths = st.one_of(st.just("images/ok.png"), st.sampled_from(TRICKY), st.text(max_size=10))


def sometimes(draw, good, bad, p_bad: float = 0.15):
    """Mostly a value from ``good``, now and then one from ``bad``."""
    roll = draw(st.integers(0, 99))  # hypothesis favours the ends: "bad" sits in the middle
    return draw(bad if 30 <= roll < 30 + 100 * p_bad else good)


@st.composite
def near_valid_records(draw) -> dict:
    """Records that are often valid, with one or another field broken now and then."""
    images = sometimes(draw, st.lists(paths, max_size=3), json_values)
    n_images = len(images) if isinstance(images, list) else 1
    turns = []
    for i in range(2 * draw(st.integers(1, 3))):
        role = sometimes(draw, st.just(("human", "gpt")[i % 2]), json_values, 0.05)
        value = draw(st.text(min_size=1, max_size=10).filter(str.strip))
        if i == 0 and draw(st.integers(0, 4)):
            value = "<image>\n" * n_images + value
        turns.append({"from": role, "value": sometimes(draw, st.just(value), texts, 0.1)})
    record = {
        "id": sometimes(draw, st.text(min_size=1, max_size=4), json_values, 0.1),
        "conversations": sometimes(draw, st.just(turns), json_values, 0.05),
    }
    if images:
        record["image"] = images
    if draw(st.booleans()):
        record["meta"] = sometimes(draw, st.fixed_dictionaries({}, optional={
            "choices": st.lists(st.text(max_size=3), max_size=5),
            "answer_index": st.one_of(st.integers(-1, 6), st.sampled_from(TRICKY))}),
            json_values, 0.1)
    return record


records = st.one_of(json_values, near_valid_records())


@pytest.fixture(scope="module")
def root():
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "root" / "images").mkdir(parents=True)
        Image.new("RGB", (16, 16), "red").save(base / "outside.png")
        Image.new("RGB", (16, 16), "blue").save(base / "root" / "images" / "ok.png")
        (base / "root" / "images" / "link.png").symlink_to(base / "outside.png")
        yield base / "root"


def assert_well_formed(out: dict) -> None:
    images = out.get("image")
    n = 0 if images is None else 1 if isinstance(images, str) else len(images)
    turns = out["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
    assert sum(t["value"].count(IMAGE_TOKEN) for t in turns) == n
    assert isinstance(out["id"], str) and isinstance(out["meta"], dict)


@SETTINGS
@given(record=records)
def test_any_record_passes_or_raises_a_known_reason(root, record):
    validator = RecordValidator(root)
    try:
        out = validator.check(record, file="f.jsonl", line=1)
    except DataError as err:
        assert err.reason in REASONS
        assert str(err).startswith(f"f.jsonl:1: [{err.reason}]")
    else:
        assert_well_formed(out)


def _png_uri() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (9, 9), "green").save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.just("image"), "image": st.one_of(paths, json_values)}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries(
        {"url": st.one_of(paths, st.just(_png_uri()), json_values)})}),
    json_values,
)


@st.composite
def near_valid_chats(draw) -> dict:
    messages = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": sometimes(draw, texts, json_values)})
    for i in range(2 * draw(st.integers(1, 2))):
        role = sometimes(draw, st.just(("user", "assistant")[i % 2]), json_values, 0.05)
        content = sometimes(draw, st.text(min_size=1, max_size=8).filter(str.strip),
                            st.one_of(texts, json_values), 0.1)
        if i == 0 and draw(st.booleans()):
            content = draw(st.lists(parts, max_size=3)) + [{"type": "text", "text": content}]
        messages.append({"role": role, "content": content})
    chat = {"messages": messages}
    if draw(st.integers(0, 4)) == 2:
        chat["images"] = draw(st.one_of(st.lists(paths, max_size=2), json_values))
    return chat


chats = st.one_of(json_values, near_valid_chats())


@SETTINGS
@given(chat=chats)
def test_any_chat_converts_or_gives_a_known_reason(root, chat):
    try:
        record = sharegpt.to_record(chat, "c-1", image_root=root,
                                    data_uri_dir=root / "cache")
    except Problem as p:
        assert p.reason in REASONS
        return
    try:
        RecordValidator(root).check(record, file="c.jsonl", line=1)
    except DataError as err:
        assert err.reason in REASONS

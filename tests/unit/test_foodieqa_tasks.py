"""FoodieQA sivqa / mivqa / textqa: the authors' prompt templates and the streaming adapter.

The expected prompts are written out by hand from the authors' evaluation code (repository
lyan62/FoodieQA, model-eval/scripts/sivqa_utils.py, eval_mivqa_en.py, textqa_utils.py, and the
README's multi-image prompts).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.data.adapters import get_adapter
from vlmtune.data.adapters.foodieqa import iter_records, source_files
from vlmtune.data.foodieqa import (
    TEMPLATES,
    record_to_conversation,
    render_prompt,
    template_numbers,
)
from vlmtune.data.validate import RecordValidator, validate_records
from vlmtune.errors import ConfigError, DataError

# --- records in the on-disk shape -------------------------------------------------------------

SIVQA = {
    "question": "图片中的食物通常属于哪个菜系? ",
    "choices": ["京菜", " 徽菜", "新疆菜", "桂菜"],
    "answer": "2",
    "question_type": "cuisine_type",
    "food_name": "烤羊肉串",
    "question_id": "vqa-0",
    "food_meta": {
        "main_ingredient": ["肉", "羊"],
        "id": 217,
        "food_name": "烤羊肉串",
        "food_type": "新疆菜",
        "food_location": "餐馆",
        "food_file": "images/217_IMG_3854.png",
    },
    "question_en": "The food in the picture usually belongs to which cuisine?",
    "choices_en": ["Beijing cuisine", "Anhui cuisine", "Xinjiang cuisine", "Guizhou cuisine"],
}
MIVQA = {
    "question": "以下哪道菜是四川菜？",
    "question_en": "Which of the following dishes is from Sichuan?",
    "images": ["images/m/3.png", "images/m/1.png", "images/m/0.png", "images/m/2.png"],
    "answer": "1",
    "question_type": "region",
    "ann_group": "川",
    "qid": "mivqa-7",
}
TEXTQA = {
    "question": "佛跳墙是哪个省份的特色菜？",
    "choices": ["福建", "广东", "四川", "湖南"],
    "answer": "0",
    "question_type": "region",
    "food_name": "佛跳墙",
    "qid": "textqa-3",
}
RECORDS = {"sivqa": SIVQA, "mivqa": MIVQA, "textqa": TEXTQA}

SIVQA_ZH_OPTIONS = "（A) 京菜\n（B) 徽菜\n（C) 新疆菜\n（D) 桂菜\n"
SIVQA_EN_OPTIONS = (
    "（A) Beijing cuisine\n（B) Anhui cuisine\n（C) Xinjiang cuisine\n（D) Guizhou cuisine\n"
)
TEXTQA_OPTIONS = "（A) 福建\n（B) 广东\n（C) 四川\n（D) 湖南\n"

# (task, lang, template) -> (user text, assistant prefix)
EXPECTED: dict[tuple[str, str, int], tuple[str, str]] = {
    ("sivqa", "zh", 0): (
        "<image>\n图片中的食物通常属于哪个菜系? 选项有: " + SIVQA_ZH_OPTIONS
        + ", 请根据上图从所提供的选项中选择一个正确答案，为（",
        "",
    ),
    ("sivqa", "zh", 1): (
        "<image>\n你是一个人工智能助手，请你看图回答以下选择题：图片中的食物通常属于哪个菜系? "
        "选项有: " + SIVQA_ZH_OPTIONS + ", 请从中选择一个正确答案，为（",
        "",
    ),
    ("sivqa", "zh", 2): (
        "<image>\n你是一个智能助手，现在请看图回答以下选择题：图片中的食物通常属于哪个菜系? "
        "选项有: " + SIVQA_ZH_OPTIONS,
        "我从所提供的选项中选择一个正确答案，为（",
    ),
    ("sivqa", "zh", 3): (
        "<image>\n图片中的食物通常属于哪个菜系? 这是选项: " + SIVQA_ZH_OPTIONS
        + " 请根据上图从所提供的选项中选择一个正确答案。",
        "我选择（",
    ),
    ("sivqa", "zh", 4): (
        "<image>\n图片中的食物通常属于哪个菜系? 这是选项: " + SIVQA_ZH_OPTIONS
        + " 请根据上图从所提供的选项中选择一个正确答案。请保证你的答案清晰简洁并输出字母选项。",
        "我选择（",
    ),
    ("sivqa", "en", 0): (
        "<image>\nThe food in the picture usually belongs to which cuisine? Here are the "
        "options: " + SIVQA_EN_OPTIONS
        + " If had to select one of the options, my answer would be (",
        "",
    ),
    ("sivqa", "en", 1): (
        "<image>\nYou are an AI assistant. Please answer the following multiple choice "
        "question based on the image: The food in the picture usually belongs to which "
        "cuisine? Here are the options: " + SIVQA_EN_OPTIONS
        + " Please select one of the options as your answer (",
        "",
    ),
    ("sivqa", "en", 2): (
        "<image>\nThe food in the picture usually belongs to which cuisine? Here are the "
        "options: " + SIVQA_EN_OPTIONS,
        "If had to select one of the options, my answer would be (",
    ),
    ("sivqa", "en", 3): (
        "<image>\nThe food in the picture usually belongs to which cuisine? These are the "
        "options: " + SIVQA_EN_OPTIONS + " Please select one of the options as your answer.",
        "I would select (",
    ),
    ("mivqa", "zh", 0): (
        "<image>\n<image>\n<image>\n<image>\n根据以上四张图回答问题，他们分别为图A, 图B, 图C, "
        "图D, 请从给定选项ABCD中选择一个最合适的答案。问题：以上哪道菜是四川菜？, 答案为：图",
        "",
    ),
    ("mivqa", "zh", 1): (
        "<image>图A\n<image>图B\n<image>图C\n<image>图D\n根据以上四张图回答问题, "
        "请从给定选项ABCD中选择一个最合适的答案。问题：以上哪道菜是四川菜？, 答案为：图",
        "",
    ),
    ("mivqa", "zh", 2): (
        "根据以下四张图回答问题,请从给定选项ABCD中选择一个最合适的答案。<image>图A\n"
        "<image>图B\n<image>图C\n<image>图D\n问题：以上哪道菜是四川菜？, 答案为：图",
        "",
    ),
    ("mivqa", "zh", 3): (
        "问题以下哪道菜是四川菜？，选项有: 图A<image>\n图B<image>\n图C<image>\n图D<image>\n",
        "如果从给定选项ABCD中选择一个最合适的答案， 答案为：图",
    ),
    ("mivqa", "en", 0): (
        "<image>\n<image>\n<image>\n<image>\nAnswer the following question according to the "
        "provided four images which corresponds to Option (A), Option (B), Option (C), "
        "Option (D). Choose one best answer from the given options. Question: Which of the "
        "following dishes is from Sichuan?, your answer is: Option (",
        "",
    ),
    ("mivqa", "en", 1): (
        "Answer the following question according to the provided four images, which "
        "corresponds to Option (A), Option (B), Option (C), Option (D). Choose one best answer "
        "from the given options. <image>Option (A)\n<image>Option (B)\n<image>Option (C)\n"
        "<image>Option (D)\nQuestion: Which of the following dishes is from Sichuan?, your "
        "answer is: Option (",
        "",
    ),
    ("mivqa", "en", 2): (
        "Answer the following question according to the provided four images, and choose one "
        "best answer from the given options. <image>Option (A)\n<image>Option (B)\n"
        "<image>Option (C)\n<image>Option (D)\nQuestion: Which of the following dishes is from "
        "Sichuan?, your answer is: Option (",
        "",
    ),
    ("mivqa", "en", 3): (
        "QuestionWhich of the following dishes is from Sichuan? The options are: Option (A)"
        "<image>\nOption (B)<image>\nOption (C)<image>\nOption (D)<image>\n",
        "If I have to choose one best answer from the given options， the answer is：Option (",
    ),
    ("textqa", "zh", 0): (
        "佛跳墙是哪个省份的特色菜？ 选项有: " + TEXTQA_OPTIONS
        + ", 请根据从所提供的选项中选择一个正确答案，为（",
        "",
    ),
    ("textqa", "zh", 1): (
        "你是一个智能助手，请你回答以下选择题：佛跳墙是哪个省份的特色菜？ 选项有: "
        + TEXTQA_OPTIONS + ", 请从中选择一个正确答案，为（",
        "",
    ),
    ("textqa", "zh", 2): (
        "你是一个智能助手，现在回答以下选择题：佛跳墙是哪个省份的特色菜？ 选项有: "
        + TEXTQA_OPTIONS + "\n",
        "我从所提供的选项中选择一个正确答案，为（",
    ),
    ("textqa", "zh", 3): (
        "佛跳墙是哪个省份的特色菜？ 这是选项: " + TEXTQA_OPTIONS
        + " 请从所提供的选项中选择一个正确答案。请保证你的答案清晰简洁并输出字母选项。\n",
        "我选择（",
    ),
}
ANSWERS = {"sivqa": {"zh": "C) 新疆菜", "en": "C) Xinjiang cuisine"},
           "mivqa": {"zh": "B", "en": "B"}, "textqa": {"zh": "A) 福建"}}


# --- prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "lang", "number"), sorted(EXPECTED))
def test_prompt_matches_the_authors(task: str, lang: str, number: int) -> None:
    assert render_prompt(task, RECORDS[task], lang, number) == EXPECTED[(task, lang, number)]


def test_every_template_has_a_hand_written_expectation() -> None:
    assert set(EXPECTED) == set(TEMPLATES)
    assert template_numbers("sivqa", "zh") == [0, 1, 2, 3, 4]
    assert template_numbers("sivqa", "en") == [0, 1, 2, 3]
    assert template_numbers("mivqa", "zh") == template_numbers("mivqa", "en") == [0, 1, 2, 3]
    assert template_numbers("textqa", "zh") == [0, 1, 2, 3]
    assert template_numbers("textqa", "en") == []


def test_mivqa_zh_3_turns_above_into_below() -> None:
    rec = {**MIVQA, "question": "以上哪道菜是四川菜？"}
    user, _ = render_prompt("mivqa", rec, "zh", 3)
    assert user.startswith("问题以下哪道菜是四川菜？，选项有: ")
    assert render_prompt("mivqa", rec, "zh", 0) == EXPECTED[("mivqa", "zh", 0)]


@pytest.mark.parametrize(("task", "lang", "numbers"), [
    ("sivqa", "zh", "[0, 1, 2, 3, 4]"), ("sivqa", "en", "[0, 1, 2, 3]"),
    ("mivqa", "en", "[0, 1, 2, 3]"), ("textqa", "zh", "[0, 1, 2, 3]")])
@pytest.mark.parametrize("bad", [5, 9, -1, "0", True, None])
def test_unknown_template_is_a_config_error(task: str, lang: str, numbers: str,
                                            bad: object) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.template") as info:
        render_prompt(task, RECORDS[task], lang, bad)  # type: ignore[arg-type]
    assert numbers in str(info.value)


def test_unknown_task_and_unavailable_lang(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset\.task"):
        render_prompt("vqa", SIVQA, "zh", 0)
    with pytest.raises(ConfigError, match=r"dataset\.lang=.*textqa.*\['zh'\]"):
        render_prompt("textqa", TEXTQA, "en", 0)
    with pytest.raises(ConfigError, match=r"dataset\.lang"):
        render_prompt("sivqa", SIVQA, "fr", 0)
    # the adapter checks its options before touching the files
    with pytest.raises(ConfigError, match=r"dataset\.template"):
        iter_records(tmp_path / "nowhere", task="mivqa", lang="zh", template=4)


# --- conversation records ---------------------------------------------------------------------


def first_letter(conv: dict) -> str:
    """The authors' parse: the first A-D after the assistant prefix."""
    reply = conv["conversations"][1]["value"]
    prefix = conv["meta"]["assistant_prefix"]
    assert reply.startswith(prefix)
    return re.search("[A-D]", reply[len(prefix):]).group(0)


@pytest.mark.parametrize(("task", "lang", "number"), sorted(EXPECTED))
def test_conversation_for_every_template(task: str, lang: str, number: int) -> None:
    conv = record_to_conversation(task, RECORDS[task], lang=lang, template=number)
    user, prefix = EXPECTED[(task, lang, number)]
    human, gpt = conv["conversations"]
    assert (human, gpt) == ({"from": "human", "value": user},
                            {"from": "gpt", "value": prefix + ANSWERS[task][lang]})
    meta = conv["meta"]
    assert (meta["lang"], meta["template"], meta["task"]) == (lang, number, task)
    assert "ABCD"[meta["answer_index"]] == first_letter(conv)
    assert human["value"].count("<image>") == {"sivqa": 1, "mivqa": 4, "textqa": 0}[task]


def test_sivqa_record() -> None:
    conv = record_to_conversation("sivqa", SIVQA, lang="zh", template=3)
    assert conv["id"] == "vqa-0" and conv["image"] == "images/217_IMG_3854.png"
    assert conv["conversations"][1]["value"] == "我选择（C) 新疆菜"
    assert conv["meta"] == {
        "question_type": "cuisine_type", "food_name": "烤羊肉串", "question_id": "vqa-0",
        "answer_index": 2, "choices": ["京菜", "徽菜", "新疆菜", "桂菜"], "letters": "ABCD",
        "group": "images/217_IMG_3854.png", "lang": "zh", "template": 3, "task": "sivqa",
        "assistant_prefix": "我选择（"}


def test_mivqa_record() -> None:
    conv = record_to_conversation("mivqa", MIVQA, lang="zh", template=3)
    assert conv["id"] == "mivqa-7" and conv["image"] == MIVQA["images"]
    assert conv["conversations"][1]["value"] == (
        "如果从给定选项ABCD中选择一个最合适的答案， 答案为：图B")
    assert conv["meta"] == {
        "question_type": "region", "food_name": None, "question_id": "mivqa-7",
        "answer_index": 1, "choices": MIVQA["images"], "letters": "ABCD",
        "group": "images/m/0.png|images/m/1.png|images/m/2.png|images/m/3.png",
        "lang": "zh", "template": 3, "task": "mivqa",
        "assistant_prefix": "如果从给定选项ABCD中选择一个最合适的答案， 答案为：图"}
    # the same four photos in another order are the same group
    other = record_to_conversation("mivqa", {**MIVQA, "images": sorted(MIVQA["images"]),
                                             "question_id": "mivqa-8"})
    assert other["meta"]["group"] == conv["meta"]["group"] and other["id"] == "mivqa-8"


def test_textqa_record() -> None:
    conv = record_to_conversation("textqa", TEXTQA, lang="zh", template=2)
    assert "image" not in conv and conv["id"] == "textqa-3"
    assert conv["conversations"][1]["value"] == "我从所提供的选项中选择一个正确答案，为（A) 福建"
    assert conv["meta"]["group"] == "textqa-3" and conv["meta"]["choices"] == TEXTQA["choices"]
    assert conv["meta"]["food_name"] == "佛跳墙"


@pytest.mark.parametrize("task", ["sivqa", "mivqa", "textqa"])
@pytest.mark.parametrize("answer", ["4", "-1", "x", "", "1.0", 2, 2.0, None, [1]])
def test_invalid_answer(task: str, answer: object) -> None:
    with pytest.raises(DataError) as info:
        record_to_conversation(task, {**RECORDS[task], "answer": answer})
    assert info.value.reason == "invalid_answer"


def test_answer_must_be_within_the_choices() -> None:
    rec = {**TEXTQA, "choices": ["福建", "广东"], "answer": "2"}
    with pytest.raises(DataError) as info:
        record_to_conversation("textqa", rec)
    assert info.value.reason == "invalid_answer"
    assert record_to_conversation("textqa", {**rec, "answer": "1"})["meta"]["letters"] == "AB"


@pytest.mark.parametrize(("task", "change"), [
    ("mivqa", {"images": MIVQA["images"][:3]}),
    ("mivqa", {"images": [*MIVQA["images"][:3], 7]}),
    ("mivqa", {"images": "images/m/0.png"}),
    ("mivqa", {"question_en": None}),
    ("sivqa", {"food_meta": {"food_name": "烤羊肉串"}}),
    ("sivqa", {"choices": ["a", "b", "c", "d", "e"]}),
    ("textqa", {"qid": None}),
    ("textqa", {"question": "  "}),
])
def test_bad_record(task: str, change: dict) -> None:
    lang = "en" if "question_en" in change else "zh"
    with pytest.raises(DataError) as info:
        record_to_conversation(task, {**RECORDS[task], **change}, lang=lang)
    assert info.value.reason == "bad_record"
    with pytest.raises(DataError) as info:
        record_to_conversation(task, ["not", "an", "object"])
    assert info.value.reason == "bad_record"


# --- the adapter on disk ----------------------------------------------------------------------


def png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path, "PNG")


def write_task(root: Path, task: str, records: list) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{task}_tidy.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=4), encoding="utf-8")
    return path


@pytest.fixture
def foodie_root(tmp_path: Path) -> Path:
    """All three task files; line 2 of each has a bad answer, line 3 is broken otherwise."""
    root = tmp_path / "FoodieQA"
    png(root / SIVQA["food_meta"]["food_file"], (200, 30, 30))
    for i, rel in enumerate(sorted(MIVQA["images"])):
        png(root / rel, (40 * i, 90, 200))
    second_photo = {**SIVQA["food_meta"], "food_file": "images/missing.png"}
    write_task(root, "sivqa", [
        SIVQA, {**SIVQA, "question_id": "vqa-1", "answer": 2, "food_meta": second_photo},
        {**SIVQA, "question_id": "vqa-2", "food_meta": {"food_file": "../outside.png"}},
    ])
    write_task(root, "mivqa", [
        MIVQA, {**MIVQA, "qid": "mivqa-8", "answer": "4"}, "not a record"])
    write_task(root, "textqa", [
        TEXTQA, {**TEXTQA, "qid": "textqa-4", "answer": "-1"},
        {**TEXTQA, "qid": "textqa-5", "choices": "福建"}])
    return root


@pytest.mark.parametrize("task", ["sivqa", "mivqa", "textqa"])
def test_iter_records_streams_located_items(foodie_root: Path, task: str) -> None:
    items = list(get_adapter("foodieqa")(foodie_root, task=task, lang="zh", template=3))
    file = str(foodie_root.absolute() / f"{task}_tidy.json")
    assert [(f, line) for f, line, _ in items] == [(file, 1), (file, 2), (file, 3)]
    good, answer, broken = (item for _, _, item in items)
    assert good == record_to_conversation(task, RECORDS[task], lang="zh", template=3)
    assert isinstance(answer, DataError) and (answer.reason, answer.file, answer.line) == (
        "invalid_answer", file, 2)
    assert f"{file}:2: [invalid_answer]" in str(answer) and answer.hint
    if task == "sivqa":  # converts; the validator judges the photo's path
        assert broken["image"] == "../outside.png"
    else:
        assert isinstance(broken, DataError) and (broken.reason, broken.line) == ("bad_record", 3)


@pytest.mark.parametrize("task", ["sivqa", "mivqa", "textqa"])
def test_converted_records_pass_the_validator(foodie_root: Path, task: str) -> None:
    validator = RecordValidator(foodie_root)
    kept = list(validate_records(iter_records(foodie_root, task=task, template=1), validator))
    assert [r["id"] for r in kept] == [RECORDS[task].get("question_id") or RECORDS[task]["qid"]]


def test_english_mivqa_from_disk(foodie_root: Path) -> None:
    (_, _, rec), *_ = iter_records(foodie_root, task="mivqa", lang="en", template=0)
    assert rec["conversations"][0]["value"] == EXPECTED[("mivqa", "en", 0)][0]
    assert rec["conversations"][1]["value"] == "B"


def test_source_files(foodie_root: Path) -> None:
    assert source_files(foodie_root, "sivqa") == ["sivqa_tidy.json", "images/217_IMG_3854.png"]
    assert source_files(foodie_root, "mivqa") == ["mivqa_tidy.json", *sorted(MIVQA["images"])]
    assert source_files(foodie_root, "textqa") == ["textqa_tidy.json"]


def test_missing_root_file_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        iter_records(tmp_path / "nope", task="sivqa")
    assert info.value.reason == "missing_root"
    with pytest.raises(DataError) as info:
        source_files(tmp_path, "textqa")
    assert info.value.reason == "missing_file"
    (tmp_path / "mivqa_tidy.json").write_text('{"question": "不是数组"}', encoding="utf-8")
    with pytest.raises(DataError) as info:
        iter_records(tmp_path, task="mivqa")
    assert info.value.reason == "bad_json"
    (tmp_path / "textqa_tidy.json").write_text('[{"question": ', encoding="utf-8")
    with pytest.raises(DataError) as info:
        iter_records(tmp_path, task="textqa")
    assert (info.value.reason, info.value.line) == ("bad_json", 1)

"""Prompt rendering matches the FoodieQA authors' sivqa templates character for character."""

from __future__ import annotations

import pytest

from vlmtune.data.foodieqa import (
    answer_text,
    format_choices,
    render_sivqa_prompt,
    sivqa_record_to_conversation,
)
from vlmtune.errors import ConfigError, DataError

REC = {
    "question": "图片中的菜叫什么名字？",
    "question_en": "What is the name of the dish in the picture?",
    "choices": ["红烧肉", "饺子", "麻婆豆腐", "担担面"],
    "choices_en": ["braised pork belly", "dumplings", "mapo tofu", "dan dan noodles"],
    "answer": "1",
    "question_type": "food-name",
    "food_name": "饺子",
    "question_id": "q-7",
    "food_meta": {
        "main_ingredient": ["白菜"],
        "id": 3,
        "food_name": "饺子",
        "food_type": "东北菜",
        "food_location": "餐馆",
        "food_file": "images/jiaozi/0.jpg",
    },
}


def test_format_choices() -> None:
    assert format_choices(["红烧肉", " 饺子 "]) == "（A) 红烧肉\n（B) 饺子\n"


def test_render_zh_template_0() -> None:
    expected = (
        "图片中的菜叫什么名字？ 选项有: （A) 红烧肉\n（B) 饺子\n（C) 麻婆豆腐\n（D) 担担面\n"
        ", 请根据上图从所提供的选项中选择一个正确答案，为（"
    )
    assert render_sivqa_prompt(REC["question"], REC["choices"], lang="zh", template=0) == expected


def test_render_en_template_0() -> None:
    expected = (
        "What is the name of the dish in the picture? Here are the options: "
        "（A) braised pork belly\n（B) dumplings\n（C) mapo tofu\n（D) dan dan noodles\n"
        " If had to select one of the options, my answer would be ("
    )
    assert render_sivqa_prompt(REC["question_en"], REC["choices_en"], lang="en") == expected


def test_answer_text() -> None:
    assert answer_text(REC["choices"], 1, "zh") == "B) 饺子"
    assert answer_text(REC["choices_en"], 3, "en") == "D) dan dan noodles"


def test_unknown_template_and_lang_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"dataset\.template"):
        render_sivqa_prompt("q", ["a"], lang="zh", template=9)
    with pytest.raises(ConfigError, match=r"dataset\.lang"):
        render_sivqa_prompt("q", ["a"], lang="fr")


def test_record_to_conversation_zh() -> None:
    conv = sivqa_record_to_conversation(REC, lang="zh", template=0)
    assert conv["id"] == "q-7" and conv["image"] == "images/jiaozi/0.jpg"
    human, gpt = conv["conversations"]
    assert human["from"] == "human" and gpt["from"] == "gpt"
    assert human["value"] == "<image>\n" + render_sivqa_prompt(REC["question"], REC["choices"])
    assert gpt["value"] == "B) 饺子"
    assert conv["meta"] == {
        "question_type": "food-name",
        "food_name": "饺子",
        "question_id": "q-7",
        "answer_index": 1,
        "choices": REC["choices"],
        "letters": "ABCD",
        "group": "images/jiaozi/0.jpg",
        "lang": "zh",
        "template": 0,
        "task": "sivqa",
        "assistant_prefix": "",
    }


def test_record_to_conversation_en() -> None:
    conv = sivqa_record_to_conversation(REC, lang="en", template=0)
    assert conv["conversations"][1]["value"] == "B) dumplings"
    assert conv["meta"]["choices"] == REC["choices_en"] and conv["meta"]["lang"] == "en"


@pytest.mark.parametrize("answer", ["4", "-1", "x", "", "01", " 1", 1, 2, None, True])
def test_invalid_answer(answer: object) -> None:
    with pytest.raises(DataError) as info:
        sivqa_record_to_conversation({**REC, "answer": answer}, lang="zh", template=0)
    assert info.value.reason == "invalid_answer"


@pytest.mark.parametrize("missing", ["food_meta", "question", "choices", "question_id"])
def test_missing_field_is_a_bad_record(missing: str) -> None:
    rec = {k: v for k, v in REC.items() if k != missing}
    with pytest.raises(DataError) as info:
        sivqa_record_to_conversation(rec, lang="zh", template=0)
    assert info.value.reason == "bad_record"

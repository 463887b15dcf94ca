"""FoodieQA sivqa adapter: render prompts the way the FoodieQA authors evaluate.

The templates and the choice format follow the authors' ``model-eval/scripts/sivqa_utils.py``
(``format_choices`` / ``format_text_prompt``): the question is stripped, each choice is written
as ``（A) text`` followed by a newline (so the options block ends with a newline), and the
block is put into the template unchanged.
"""

from __future__ import annotations

from vlmtune.errors import ConfigError, DataError

LETTERS = "ABCD"
LANGS = ("zh", "en")

# (lang, number) -> template; {q} is the question, {choices} the options block.
TEMPLATES: dict[tuple[str, int], str] = {
    ("zh", 0): "{q} 选项有: {choices}, 请根据上图从所提供的选项中选择一个正确答案，为（",
    ("en", 0): "{q} Here are the options: {choices} "
    "If had to select one of the options, my answer would be (",
}


def get_template(lang: str, template: int) -> str:
    """The template text; ConfigError naming ``dataset.lang`` / ``dataset.template`` if unknown."""
    if lang not in LANGS:
        raise ConfigError(f"dataset.lang={lang!r} is not supported; use one of {list(LANGS)}")
    if (lang, template) not in TEMPLATES:
        known = sorted(n for lg, n in TEMPLATES if lg == lang)
        raise ConfigError(
            f"dataset.template={template!r} is unknown for lang {lang!r}; known: {known}"
        )
    return TEMPLATES[(lang, template)]


def format_choices(choices: list[str]) -> str:
    """Each choice on its own line as ``（A) text``, each line ending in a newline."""
    if len(choices) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices, got {len(choices)}")
    return "".join(f"（{LETTERS[i]}) {c.strip()}\n" for i, c in enumerate(choices))


def render_sivqa_prompt(
    question: str, choices: list[str], *, lang: str = "zh", template: int = 0
) -> str:
    """The user prompt for one question (without the image placeholder)."""
    text = get_template(lang, template)
    return text.format(q=question.strip(), choices=format_choices(choices))


def answer_text(choices: list[str], index: int, lang: str = "zh") -> str:
    """The assistant target ``"B) text"``: it continues the prompt's open parenthesis."""
    if lang not in LANGS:
        raise ConfigError(f"dataset.lang={lang!r} is not supported; use one of {list(LANGS)}")
    return f"{LETTERS[index]}) {choices[index].strip()}"


def parse_answer(answer: object, num_choices: int) -> int:
    """The answer index from FoodieQA's string field; DataError(reason="invalid_answer")."""
    ok = isinstance(answer, str) and answer.isascii() and answer.isdigit()
    if not ok or not 0 <= int(answer) < num_choices:
        raise DataError(
            f"answer {answer!r} is not a string index in 0..{num_choices - 1}",
            reason="invalid_answer",
        )
    return int(answer)


def sivqa_record_to_conversation(rec: dict, *, lang: str = "zh", template: int = 0) -> dict:
    """One sivqa record -> a LLaVA-style conversation record with evaluation metadata."""
    get_template(lang, template)
    q_key, c_key = ("question", "choices") if lang == "zh" else ("question_en", "choices_en")
    question, choices = _field(rec, q_key), _field(rec, c_key)
    food_file = _field(rec, "food_meta", "food_file")
    qid = _field(rec, "question_id")
    if not isinstance(question, str) or not isinstance(food_file, str) or not food_file:
        raise DataError(f"{q_key} and food_meta.food_file must be strings", reason="missing_field")
    if (
        not isinstance(choices, list)
        or not 1 <= len(choices) <= len(LETTERS)
        or not all(isinstance(c, str) for c in choices)
    ):
        raise DataError(f"{c_key} must be a list of 1-4 strings", reason="invalid_choices")
    index = parse_answer(rec.get("answer"), len(choices))
    prompt = render_sivqa_prompt(question, choices, lang=lang, template=template)
    return {
        "id": str(qid),
        "image": food_file,
        "conversations": [
            {"from": "human", "value": "<image>\n" + prompt},
            {"from": "gpt", "value": answer_text(choices, index, lang)},
        ],
        "meta": {
            "question_type": rec.get("question_type"),
            "food_name": rec.get("food_name"),
            "question_id": str(qid),
            "answer_index": index,
            "choices": [c.strip() for c in choices],
            "letters": LETTERS[: len(choices)],
            "group": food_file,
            "lang": lang,
            "template": template,
        },
    }


def _field(rec: dict, *keys: str) -> object:
    value: object = rec
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise DataError(f"record has no field {'.'.join(keys)!r}", reason="missing_field")
        value = value[key]
    return value

"""FoodieQA's three tasks rendered the way the FoodieQA authors prompt models in evaluation.

Sources: repository ``lyan62/FoodieQA`` at commit ``4d726407af59d60eee33b24856788d6b3db732a0``
(files under ``model-eval/scripts/``). Templates that the authors return as a two-item list, or
split into a user and an assistant message, become a user part and an assistant prefix: the
assistant turn starts with the prefix and the answer continues it.

- sivqa, zh 0-4 and en 0-3: ``sivqa_utils.py`` ``format_text_prompt`` with ``format_choices``
  and ``format_question`` (question stripped; each choice ``（A) text`` + newline). The photo goes
  first, ``<image>\\n`` + user text, as in their ``get_prompt_phi`` and Yi-VL
  ``foodie_inference.py``.
- mivqa, zh 0-3 and en 0-3: ``eval_mivqa_en.py`` ``get_prompt_phi``, the one form written as a
  string with picture placeholders (``<|image_N|>`` becomes ``<image>``), and the numbering and
  layout of the README's "Multi-image VQA" prompts. zh questions get 以下→以上 (0-2) or 以上→以下
  (3) as there. Where their scripts disagree we follow the README: zh 3 puts each label before
  its picture (``图A<image>``) as the README, ``eval_idefics2.py`` (template 3) and
  ``eval_qwen.py`` (template 4) do, while ``get_prompt_phi`` alone writes ``<image>图A``. The
  question is stripped (``eval_qwen.py`` does; ``get_prompt_phi`` does not). Qwen-VL's extra
  ``答案为：Picture`` variant (``eval_qwen.py`` template 3) is not offered.
- textqa, zh 0-3: ``textqa_utils.py`` ``format_text_prompt``; templates 2 and 3 are split at
  ``智能助手：`` as their ``get_prompt_mistral`` / ``get_prompt_idefics`` do. Their English textqa
  templates are not offered: the dataset's textqa is Chinese only and every textqa prompt
  builder there raises NotImplementedError for ``en``.

The assistant target after the prefix is ``"B) 饺子"`` (letter and choice text, continuing the
open parenthesis) for sivqa and textqa, and the picture's letter alone (``"B"``) for mivqa,
whose prompts end in ``答案为：图`` / ``Option (``; the authors' parsers read the first A-D.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmtune.errors import ConfigError, DataError

LETTERS = "ABCD"
LANGS = ("zh", "en")
TASKS = ("sivqa", "mivqa", "textqa")
IMAGE_TOKEN = "<image>"
MIVQA_IMAGES = 4

RECORD_HINT = (
    "a FoodieQA record needs question (question_en for lang=en), an answer index string and "
    "question_id or qid; sivqa/textqa also choices (choices_en), sivqa food_meta.food_file, "
    "mivqa four image paths in images"
)
ANSWER_HINT = 'FoodieQA answers are the correct index as a string: "0" to "3"'


@dataclass(frozen=True)
class Template:
    """``user`` holds ``{q}`` (and ``{choices}`` for sivqa/textqa); ``assistant`` is the prefix
    the assistant turn starts with ("" for none); ``swap`` is (old, new) replaced in the
    question before it is inserted."""

    user: str
    assistant: str = ""
    swap: tuple[str, str] | None = None


_ZH_GENERAL = "请从给定选项ABCD中选择一个最合适的答案。"
_ZH_LABELLED = "".join(f"{IMAGE_TOKEN}图{c}\n" for c in LETTERS)
_EN_LABELLED = "".join(f"{IMAGE_TOKEN}Option ({c})\n" for c in LETTERS)
_EN_IMAGES_ARE = "which corresponds to Option (A), Option (B), Option (C), Option (D)."
_EN_CHOOSE = "Choose one best answer from the given options."
_EN_ASK = "Question: {q}, your answer is: Option ("
_ABOVE, _BELOW = ("以下", "以上"), ("以上", "以下")

# (task, lang, number) -> Template.
TEMPLATES: dict[tuple[str, str, int], Template] = {
    # sivqa_utils.py format_text_prompt, lang == "zh"
    ("sivqa", "zh", 0): Template(
        "{q} 选项有: {choices}, 请根据上图从所提供的选项中选择一个正确答案，为（"
    ),
    ("sivqa", "zh", 1): Template(
        "你是一个人工智能助手，请你看图回答以下选择题：{q} 选项有: {choices}, "
        "请从中选择一个正确答案，为（"
    ),
    ("sivqa", "zh", 2): Template(
        "你是一个智能助手，现在请看图回答以下选择题：{q} 选项有: {choices}",
        "我从所提供的选项中选择一个正确答案，为（",
    ),
    ("sivqa", "zh", 3): Template(
        "{q} 这是选项: {choices} 请根据上图从所提供的选项中选择一个正确答案。", "我选择（"
    ),
    ("sivqa", "zh", 4): Template(
        "{q} 这是选项: {choices} 请根据上图从所提供的选项中选择一个正确答案。"
        "请保证你的答案清晰简洁并输出字母选项。",
        "我选择（",
    ),
    # sivqa_utils.py format_text_prompt, lang == "en"
    ("sivqa", "en", 0): Template(
        "{q} Here are the options: {choices} If had to select one of the options, "
        "my answer would be ("
    ),
    ("sivqa", "en", 1): Template(
        "You are an AI assistant. Please answer the following multiple choice question based "
        "on the image: {q} Here are the options: {choices} Please select one of the options "
        "as your answer ("
    ),
    ("sivqa", "en", 2): Template(
        "{q} Here are the options: {choices}",
        "If had to select one of the options, my answer would be (",
    ),
    ("sivqa", "en", 3): Template(
        "{q} These are the options: {choices} Please select one of the options as your answer.",
        "I would select (",
    ),
    # eval_mivqa_en.py get_prompt_phi, lang == "zh" (zh 3: label order from the README)
    ("mivqa", "zh", 0): Template(
        f"{IMAGE_TOKEN}\n" * 4 + "根据以上四张图回答问题，他们分别为图A, 图B, 图C, 图D, "
        + _ZH_GENERAL + "问题：{q}, 答案为：图",
        swap=_ABOVE,
    ),
    ("mivqa", "zh", 1): Template(
        _ZH_LABELLED + "根据以上四张图回答问题, " + _ZH_GENERAL + "问题：{q}, 答案为：图",
        swap=_ABOVE,
    ),
    ("mivqa", "zh", 2): Template(
        "根据以下四张图回答问题," + _ZH_GENERAL + _ZH_LABELLED + "问题：{q}, 答案为：图",
        swap=_ABOVE,
    ),
    ("mivqa", "zh", 3): Template(
        "问题{q}，选项有: " + "".join(f"图{c}{IMAGE_TOKEN}\n" for c in LETTERS),
        "如果从给定选项ABCD中选择一个最合适的答案， 答案为：图",
        swap=_BELOW,
    ),
    # eval_mivqa_en.py get_prompt_phi, lang == "en"
    ("mivqa", "en", 0): Template(
        f"{IMAGE_TOKEN}\n" * 4 + "Answer the following question according to the provided "
        f"four images {_EN_IMAGES_ARE} {_EN_CHOOSE} {_EN_ASK}"
    ),
    ("mivqa", "en", 1): Template(
        "Answer the following question according to the provided four images, "
        f"{_EN_IMAGES_ARE} {_EN_CHOOSE} {_EN_LABELLED}{_EN_ASK}"
    ),
    ("mivqa", "en", 2): Template(
        "Answer the following question according to the provided four images, and choose one "
        f"best answer from the given options. {_EN_LABELLED}{_EN_ASK}"
    ),
    ("mivqa", "en", 3): Template(
        "Question{q} The options are: " + "".join(f"Option ({c}){IMAGE_TOKEN}\n" for c in LETTERS),
        "If I have to choose one best answer from the given options， the answer is：Option (",
    ),
    # textqa_utils.py format_text_prompt, lang == "zh" (2 and 3 split at "智能助手：")
    ("textqa", "zh", 0): Template(
        "{q} 选项有: {choices}, 请根据从所提供的选项中选择一个正确答案，为（"
    ),
    ("textqa", "zh", 1): Template(
        "你是一个智能助手，请你回答以下选择题：{q} 选项有: {choices}, 请从中选择一个正确答案，为（"
    ),
    ("textqa", "zh", 2): Template(
        "你是一个智能助手，现在回答以下选择题：{q} 选项有: {choices}\n",
        "我从所提供的选项中选择一个正确答案，为（",
    ),
    ("textqa", "zh", 3): Template(
        "{q} 这是选项: {choices} 请从所提供的选项中选择一个正确答案。"
        "请保证你的答案清晰简洁并输出字母选项。\n",
        "我选择（",
    ),
}


def template_numbers(task: str, lang: str) -> list[int]:
    """The template numbers available for ``task`` in ``lang`` (empty if none)."""
    return sorted(n for t, lg, n in TEMPLATES if t == task and lg == lang)


def get_template(lang: str, template: int, *, task: str = "sivqa") -> Template:
    """The template; ConfigError naming ``dataset.task`` / ``dataset.lang`` /
    ``dataset.template`` (with the numbers valid for the task and language) if unknown."""
    if task not in TASKS:
        raise ConfigError(f"dataset.task={task!r} is not a FoodieQA task; use one of {list(TASKS)}")
    if lang not in LANGS:
        raise ConfigError(f"dataset.lang={lang!r} is not supported; use one of {list(LANGS)}")
    numbers = template_numbers(task, lang)
    if not numbers:
        langs = [lg for lg in LANGS if template_numbers(task, lg)]
        raise ConfigError(f"dataset.lang={lang!r}: FoodieQA {task} is available in {langs} only")
    if isinstance(template, bool) or template not in numbers:
        raise ConfigError(
            f"dataset.template={template!r} is unknown for {task} in {lang!r}; "
            f"valid numbers: {numbers}"
        )
    return TEMPLATES[(task, lang, template)]


def format_choices(choices: list[str]) -> str:
    """Each choice on its own line as ``（A) text``, each line ending in a newline."""
    if len(choices) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices, got {len(choices)}")
    return "".join(f"（{LETTERS[i]}) {c.strip()}\n" for i, c in enumerate(choices))


def render_prompt(task: str, record: dict, lang: str = "zh", template: int = 0) -> tuple[str, str]:
    """(user text, assistant prefix) for one FoodieQA record. The user text is the whole human
    turn, ``<image>`` placeholders included (one for sivqa, four for mivqa, none for textqa)."""
    tpl = get_template(lang, template, task=task)
    question = _question(record, lang)
    if tpl.swap is not None:
        question = question.replace(*tpl.swap)
    if task == "mivqa":
        return tpl.user.format(q=question), tpl.assistant
    text = tpl.user.format(q=question, choices=format_choices(_choices(record, lang)))
    return (f"{IMAGE_TOKEN}\n" + text if task == "sivqa" else text), tpl.assistant


def render_sivqa_prompt(
    question: str, choices: list[str], *, lang: str = "zh", template: int = 0
) -> str:
    """The sivqa template's user part for a question and its choices (no image placeholder)."""
    text = get_template(lang, template, task="sivqa").user
    return text.format(q=question.strip(), choices=format_choices(choices))


def target_text(task: str, choices: list[str], index: int) -> str:
    """The answer the assistant gives after the template's prefix: ``"B) text"``, or for
    mivqa the picture's letter ``"B"``."""
    if task == "mivqa":
        return LETTERS[index]
    return f"{LETTERS[index]}) {choices[index].strip()}"


def answer_text(choices: list[str], index: int, lang: str = "zh") -> str:
    """The sivqa/textqa target ``"B) text"``: it continues the prompt's open parenthesis."""
    if lang not in LANGS:
        raise ConfigError(f"dataset.lang={lang!r} is not supported; use one of {list(LANGS)}")
    return target_text("sivqa", choices, index)


def parse_answer(answer: object, num_choices: int) -> int:
    """The index from FoodieQA's answer string ("0".."n-1" exactly); DataError(invalid_answer)
    for anything else, integers included."""
    if not isinstance(answer, str) or answer not in {str(i) for i in range(num_choices)}:
        raise _error(
            "invalid_answer",
            f"answer {answer!r} is not a string index in 0..{num_choices - 1}",
            ANSWER_HINT,
        )
    return int(answer)


def record_to_conversation(task: str, rec: object, *, lang: str = "zh", template: int = 0) -> dict:
    """One FoodieQA record -> a LLaVA-style conversation record with evaluation metadata.

    DataError(bad_record) for a missing or ill-typed field, (invalid_answer) for a bad answer.
    """
    get_template(lang, template, task=task)
    if not isinstance(rec, dict):
        raise _error("bad_record", f"record is a {type(rec).__name__}, not an object")
    qid = _record_id(rec)
    user, prefix = render_prompt(task, rec, lang, template)
    out: dict = {"id": qid}
    if task == "mivqa":
        choices = _mivqa_images(rec)
        out["image"], group = list(choices), "|".join(sorted(choices))
    else:
        choices = [c.strip() for c in _choices(rec, lang)]
        if task == "sivqa":
            out["image"] = group = _food_file(rec)
        else:
            group = qid
    index = parse_answer(rec.get("answer"), len(choices))
    out["conversations"] = [
        {"from": "human", "value": user},
        {"from": "gpt", "value": prefix + target_text(task, choices, index)},
    ]
    out["meta"] = {
        "question_type": rec.get("question_type"),
        "food_name": _food_name(rec),
        "question_id": qid,
        "answer_index": index,
        "choices": choices,
        "letters": LETTERS[: len(choices)],
        "group": group,
        "lang": lang,
        "template": template,
        "task": task,
        "assistant_prefix": prefix,
    }
    return out


def sivqa_record_to_conversation(rec: dict, *, lang: str = "zh", template: int = 0) -> dict:
    """One sivqa record -> a conversation record (see ``record_to_conversation``)."""
    return record_to_conversation("sivqa", rec, lang=lang, template=template)


def _error(reason: str, message: str, hint: str = RECORD_HINT) -> DataError:
    """A DataError not yet located; ``.detail`` keeps the bare message for re-locating."""
    err = DataError(message, reason=reason, hint=hint)
    err.detail = message
    return err


def _question(rec: dict, lang: str) -> str:
    key = "question" if lang == "zh" else "question_en"
    value = rec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _error("bad_record", f"{key} must be a non-empty string")
    return value.strip()


def _choices(rec: dict, lang: str) -> list[str]:
    key = "choices" if lang == "zh" else "choices_en"
    value = rec.get(key)
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= len(LETTERS)
        or not all(isinstance(c, str) for c in value)
    ):
        raise _error("bad_record", f"{key} must be a list of 1-{len(LETTERS)} strings")
    return value


def _mivqa_images(rec: dict) -> list[str]:
    value = rec.get("images")
    if (
        not isinstance(value, list)
        or len(value) != MIVQA_IMAGES
        or not all(isinstance(p, str) and p for p in value)
    ):
        raise _error("bad_record", f"images must be a list of {MIVQA_IMAGES} image paths")
    return value


def _food_file(rec: dict) -> str:
    meta = rec.get("food_meta")
    value = meta.get("food_file") if isinstance(meta, dict) else None
    if not isinstance(value, str) or not value:
        raise _error("bad_record", "food_meta.food_file must be an image path")
    return value


def _food_name(rec: dict) -> object:
    meta = rec.get("food_meta")
    if "food_name" not in rec and isinstance(meta, dict):
        return meta.get("food_name")
    return rec.get("food_name")


def _record_id(rec: dict) -> str:
    key = "question_id" if "question_id" in rec else "qid"
    value = rec.get(key)
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise _error("bad_record", "question_id (or qid) must be a non-empty string")
    return str(value)

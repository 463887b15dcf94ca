"""FoodieQA (``lyan62/FoodieQA``): ``{task}_tidy.json`` records as conversation records.

The task file is one JSON array, loaded whole; ``line`` is the record's 1-based index in it.
A record that cannot be converted becomes a located DataError (``bad_record`` or
``invalid_answer``); a missing root or task file, or a task file that is not a JSON array,
raises at once since nothing in it can be used. Prompts: ``vlmtune.data.foodieqa``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from vlmtune.data.adapters import Item
from vlmtune.data.foodieqa import TASKS, get_template, record_to_conversation
from vlmtune.errors import ConfigError, DataError


def iter_records(
    root: Path, *, task: str = "sivqa", lang: str = "zh", template: int = 0
) -> Iterator[Item]:
    """(file, line, record | DataError) for each record of ``root/{task}_tidy.json``.

    Config and file problems raise here, before the first record is read."""
    get_template(lang, template, task=task)
    path = task_file(root, task)
    return _converted(str(path), load_records(path), task, lang, template)


def source_files(root: Path, task: str = "sivqa") -> list[str]:
    """Paths relative to ``root``: the task file, then every image its records reference that
    exists under ``root`` (sorted)."""
    root = Path(root).absolute()
    path = task_file(root, task)
    images: set[str] = set()
    for rec in load_records(path):
        for ref in _image_refs(rec, task):
            if _inside(ref) and (root / ref).is_file():
                images.add(ref)
    return [path.relative_to(root).as_posix(), *sorted(images)]


def task_file(root: Path, task: str) -> Path:
    """``root/{task}_tidy.json``; ConfigError for an unknown task, DataError if it is absent."""
    if task not in TASKS:
        raise ConfigError(f"dataset.task={task!r} is not a FoodieQA task; use one of {list(TASKS)}")
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(f"dataset.root {root} does not exist or is not a directory",
                        reason="missing_root", hint="set dataset.root to the FoodieQA folder")
    path = root / f"{task}_tidy.json"
    if not path.is_file():
        raise DataError(f"task file {path.name} not found in dataset.root {root}",
                        reason="missing_file", file=str(path))
    return path


def load_records(path: Path) -> list:
    """The task file's JSON array; DataError(bad_json) if it is not one."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason})", reason="bad_json",
                        file=str(path)) from err
    except json.JSONDecodeError as err:
        raise DataError(f"invalid JSON at column {err.colno}: {err.msg}", reason="bad_json",
                        file=str(path), line=err.lineno) from err
    if not isinstance(data, list):
        raise DataError("expected one JSON array of records", reason="bad_json", file=str(path))
    return data


def _converted(file: str, records: list, task: str, lang: str, template: int) -> Iterator[Item]:
    for line, rec in enumerate(records, start=1):
        try:
            yield file, line, record_to_conversation(task, rec, lang=lang, template=template)
        except DataError as err:
            detail = getattr(err, "detail", str(err))
            located = DataError(detail, reason=err.reason, file=file, line=line, hint=err.hint)
            located.detail = detail
            yield file, line, located


def _image_refs(rec: object, task: str) -> list[str]:
    """The image paths a record names (whatever else is wrong with it)."""
    if not isinstance(rec, dict):
        return []
    if task == "sivqa":
        meta = rec.get("food_meta")
        refs = [meta.get("food_file")] if isinstance(meta, dict) else []
    elif task == "mivqa":
        refs = rec.get("images") if isinstance(rec.get("images"), list) else []
    else:
        refs = []
    return [r for r in refs if isinstance(r, str) and r and "\0" not in r]


def _inside(rel: str) -> bool:
    """Lexically under root (symlinks are allowed: hub caches link images to blobs)."""
    norm = os.path.normpath(rel)
    return not os.path.isabs(norm) and norm != ".." and not norm.startswith(".." + os.sep)

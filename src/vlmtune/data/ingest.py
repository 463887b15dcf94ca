"""Ingest FoodieQA (sivqa) into train / held-out conversation JSONL files plus a manifest."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlmtune.data.fingerprint import fingerprint_files
from vlmtune.data.foodieqa import get_template, sivqa_record_to_conversation
from vlmtune.data.split import split_records
from vlmtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TASKS = ("sivqa",)
ON_INVALID = ("drop", "raise")
GROUP_KEY = "food_meta.food_file"


@dataclass
class IngestResult:
    train_path: Path
    heldout_path: Path
    manifest_path: Path
    manifest: dict


def ingest_foodieqa(
    root: Path,
    out_dir: Path,
    *,
    task: str = "sivqa",
    lang: str = "zh",
    template: int = 0,
    on_invalid: str = "drop",
    heldout_fraction: float = 0.25,
    split_seed: int = 0,
    source_fingerprint: str | None = None,
    card: dict | None = None,
) -> IngestResult:
    """Validate, convert and split the task's records; write train/heldout JSONL + manifest."""
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"dataset.on_invalid={on_invalid!r}: use one of {list(ON_INVALID)}")
    get_template(lang, template)
    root = Path(root).absolute()
    task_path = _task_path(root, task)
    records = _load_records(task_path)

    kept: list[dict] = []
    drops: Counter[str] = Counter()
    image_problems: dict[str, tuple[str, str] | None] = {}
    for line, rec in enumerate(records, start=1):
        try:
            conv = sivqa_record_to_conversation(_as_record(rec), lang=lang, template=template)
            image = conv["image"]
            if image not in image_problems:
                image_problems[image] = _image_problem(root, image)
            if problem := image_problems[image]:
                raise DataError(f"image {image!r}: {problem[1]}", reason=problem[0])
        except DataError as err:
            if on_invalid == "raise":
                raise DataError(
                    str(err.args[0]).removeprefix(f"[{err.reason}] "),
                    reason=err.reason,
                    file=str(task_path),
                    line=line,
                    hint="fix or remove the record, or set dataset.on_invalid=drop",
                ) from err
            log.debug("%s:%d: dropped (%s)", task_path, line, err.reason)
            drops[err.reason] += 1
            continue
        kept.append(conv)
    if drops:
        log.warning("dropped %d of %d records: %s", sum(drops.values()), len(records), dict(drops))

    train, heldout = split_records(
        kept,
        group_of=lambda c: c["meta"]["group"],
        heldout_fraction=heldout_fraction,
        seed=split_seed,
    )
    if source_fingerprint is None:
        source_fingerprint = fingerprint_files(root, _source_files(root, task_path, records))
    manifest = {
        "adapter": "foodieqa",
        "task": task,
        "lang": lang,
        "template": template,
        "source": str(root),
        "image_root": str(root),
        "counts": {
            "read": len(records),
            "kept": len(kept),
            "train": len(train),
            "heldout": len(heldout),
            "dropped": sum(drops.values()),
        },
        "drops": dict(sorted(drops.items())),
        "fingerprint": source_fingerprint,
        "split": {"group_key": GROUP_KEY, "heldout_fraction": heldout_fraction, "seed": split_seed},
        "license": (card or {}).get("license"),
        "usage": (card or {}).get("usage"),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, heldout_path = out_dir / "train.jsonl", out_dir / "heldout.jsonl"
    manifest_path = out_dir / "manifest.json"
    _write_atomic(train_path, _jsonl(train))
    _write_atomic(heldout_path, _jsonl(heldout))
    _write_atomic(manifest_path, json.dumps(manifest, ensure_ascii=False, indent=2) + "\n")
    return IngestResult(train_path, heldout_path, manifest_path, manifest)


def sivqa_source_files(root: Path, task: str = "sivqa") -> list[str]:
    """Relative paths of the task file and every referenced image that exists."""
    root = Path(root).absolute()
    task_path = _task_path(root, task)
    return _source_files(root, task_path, _load_records(task_path))


def _source_files(root: Path, task_path: Path, records: list) -> list[str]:
    images = set()
    for rec in records:
        meta = rec.get("food_meta") if isinstance(rec, dict) else None
        image = meta.get("food_file") if isinstance(meta, dict) else None
        if isinstance(image, str) and _inside(image) and (root / image).is_file():
            images.add(image)
    return [task_path.name, *sorted(images)]


def _task_path(root: Path, task: str) -> Path:
    if task not in TASKS:
        raise ConfigError(f"dataset.task={task!r} is not supported yet; use one of {list(TASKS)}")
    if not root.is_dir():
        raise DataError(
            f"dataset.root {root} does not exist or is not a directory",
            reason="missing_root",
            hint="set dataset.root to the FoodieQA folder",
        )
    path = root / f"{task}_tidy.json"
    if not path.is_file():
        raise DataError(
            f"task file {path.name} not found in dataset.root {root}",
            reason="missing_file",
            file=str(path),
        )
    return path


def _load_records(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"invalid JSON: {err.msg}", reason="bad_json", file=str(path), line=err.lineno
        ) from err
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text: {err}", reason="bad_json", file=str(path)) from err
    if not isinstance(data, list):
        raise DataError("expected one JSON array of records", reason="bad_json", file=str(path))
    return data


def _as_record(rec: object) -> dict:
    if not isinstance(rec, dict):
        raise DataError("record is not a JSON object", reason="missing_field")
    return rec


def _inside(rel: str) -> bool:
    """Lexically under root (symlinks are allowed: hub caches link images to blobs)."""
    norm = os.path.normpath(rel)
    return not os.path.isabs(norm) and norm != ".." and not norm.startswith(".." + os.sep)


def _image_problem(root: Path, rel: str) -> tuple[str, str] | None:
    """None if the image exists under root and decodes, else (reason, detail)."""
    if not _inside(rel):
        return "missing_image", "outside dataset.root"
    path = root / rel
    if not path.is_file():
        return "missing_image", f"{path} not found"
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() misses truncated JPEGs; a cheap decode does not
            im.draft(None, (1, 1))
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return "unreadable_image", f"{path} cannot be read ({err})"
    return None


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

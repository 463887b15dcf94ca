"""LLaVA conversation JSON (one array) or JSONL: already the record shape, passed through.

``image`` may be one path or a list (``images`` is read as an alias); ``<image>`` placeholders
stay where they are. Keys other than id/image/conversations/meta move into ``meta``; a record
without an id gets ``<file stem>-<line>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vlmtune.data.adapters import Item, check_options, converted, default_id, iter_json_values
from vlmtune.data.validate import RECORD_KEYS, Problem
from vlmtune.errors import DataError


def iter_records(source: Path, **columns: str) -> Iterator[Item]:
    """(file, line, record | DataError) for each record of a LLaVA JSON / JSONL file."""
    check_options("llava", columns, ())
    for file, line, value in iter_json_values(source):
        if isinstance(value, DataError):
            yield file, line, value
        else:
            yield converted(file, line, lambda v=value, n=line: to_record(v, default_id(source, n)))


def to_record(obj: object, rid: str) -> dict:
    """One LLaVA object as a conversation record (checked later by the validator)."""
    if not isinstance(obj, dict):
        raise Problem("bad_record", f"record is a {type(obj).__name__}, not an object")
    rec: dict = {"id": obj.get("id", rid)}
    image = obj["image"] if "image" in obj else obj.get("images")
    if image is not None:
        rec["image"] = image
    rec["conversations"] = obj.get("conversations")
    meta = obj.get("meta", {})
    used = (*RECORD_KEYS, "images") if "image" not in obj else RECORD_KEYS
    extras = {k: v for k, v in obj.items() if k not in used}
    if extras and isinstance(meta, dict):
        meta = {**extras, **meta}
    rec["meta"] = meta
    return rec

"""ShareGPT and OpenAI-style chat JSON / JSONL as conversation records.

Accepted shapes (one object per record):

- ``conversations`` of ``{"from", "value"}`` or ``{"role", "content"}`` turns;
- ``messages`` of ``{"role", "content"}``, where content is text or a list of parts:
  ``{"type": "text", "text"}``, ``{"type": "image", "image": path}``,
  ``{"type": "image_url", "image_url": {"url": path | data URI}}``.

Roles user/assistant become human/gpt; system turns (and a top-level ``system``) go to
``meta.system``. Each image part becomes an ``<image>`` placeholder at its place in the turn
(parts are joined by newlines). Top-level ``images`` / ``image`` are used when the turns carry
``<image>`` placeholders themselves. A ``data:`` URI image is decoded into ``data_uri_dir``
(inside the image root) under its content hash. Remote URLs are never fetched.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path

from vlmtune.data.adapters import (
    Item,
    cache_image_bytes,
    check_options,
    converted,
    default_id,
    inside_dir,
    iter_json_values,
    relative_ref,
)
from vlmtune.data.validate import IMAGE_TOKEN, Problem
from vlmtune.errors import DataError

ROLE_NAMES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
TOP_KEYS = ("id", "conversations", "messages", "image", "images", "system", "meta")


def iter_records(
    source: Path,
    *,
    image_root: Path | None = None,
    data_uri_dir: Path | None = None,
    **columns: str,
) -> Iterator[Item]:
    """(file, line, record | DataError) for each chat of a ShareGPT / OpenAI JSON(L) file.

    ``image_root`` defaults to the file's folder; ``data_uri_dir`` must lie inside it.
    """
    check_options("sharegpt", columns, ())
    image_root = Path(image_root) if image_root is not None else Path(source).parent
    if data_uri_dir is not None:
        data_uri_dir = inside_dir(data_uri_dir, image_root, "data_uri_dir")
    for file, line, value in iter_json_values(source):
        if isinstance(value, DataError):
            yield file, line, value
            continue
        yield converted(file, line, lambda v=value, n=line: to_record(
            v, default_id(source, n), image_root=image_root, data_uri_dir=data_uri_dir))


def to_record(
    obj: object, rid: str, *, image_root: Path, data_uri_dir: Path | None = None
) -> dict:
    """One chat object as a conversation record (checked later by the validator)."""
    if not isinstance(obj, dict):
        raise Problem("bad_record", f"record is a {type(obj).__name__}, not an object")
    key = "messages" if "messages" in obj else "conversations"
    messages = obj.get(key)
    if not isinstance(messages, list):
        raise Problem("bad_record", "expected a list under 'conversations' or 'messages'")

    def resolve(ref: str) -> str:
        return _image_ref(ref, image_root, data_uri_dir)

    system: list[str] = []
    if obj.get("system") is not None:
        if not isinstance(obj["system"], str):
            raise Problem("bad_record", "system must be a string")
        system.append(obj["system"])
    part_images: list[str] = []
    turns = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise Problem("bad_record", f"turn {i} is not an object")
        role = msg["from"] if "from" in msg else msg.get("role")
        content = msg["value"] if "value" in msg else msg.get("content")
        if role == "system":
            stray: list[str] = []
            text = _text(content, i, stray, resolve)
            if stray or not isinstance(text, str):
                raise Problem("bad_record", f"turn {i}: a system message must be text only")
            system.append(text)
            continue
        if isinstance(role, str):
            role = ROLE_NAMES.get(role.lower(), role)
        turns.append({"from": role, "value": _text(content, i, part_images, resolve)})

    top = obj["images"] if "images" in obj else obj.get("image")
    images = part_images
    if top is not None:
        refs = [top] if isinstance(top, str) else top
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise Problem("bad_record", "images must be a path or a list of paths")
        if part_images and refs:
            raise Problem("bad_record", "images are given both at the top level and in messages")
        images = part_images or [resolve(r) for r in refs]

    meta = obj.get("meta", {})
    if isinstance(meta, dict):
        meta = {**{k: v for k, v in obj.items() if k not in TOP_KEYS}, **meta}
        if system:
            meta["system"] = "\n".join(system)
    rec: dict = {"id": obj.get("id", rid)}
    if images:
        rec["image"] = images[0] if len(images) == 1 else images
    rec["conversations"] = turns
    rec["meta"] = meta
    return rec


def _text(content: object, turn: int, images: list[str], resolve) -> object:
    """A turn's text; image parts become ``<image>`` and their paths go to ``images``.

    Content that is neither text nor a list of parts is returned as is (the validator rejects
    it as ``bad_record``)."""
    if content is None:
        return ""
    if not isinstance(content, list):
        return content
    pieces = []
    for part in content:
        if isinstance(part, str):
            pieces.append(part)
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind in ("image", "image_url"):
            ref = part.get(kind)
            if kind == "image_url" and isinstance(ref, dict):
                ref = ref.get("url")
            if not isinstance(ref, str):
                raise Problem("bad_record", f"turn {turn}: an {kind} part needs a path or URL")
            images.append(resolve(ref))
            pieces.append(IMAGE_TOKEN)
        else:
            raise Problem("bad_record", f"turn {turn}: unsupported content part {str(part)[:60]}")
    return "\n".join(pieces)


def _image_ref(ref: str, image_root: Path, data_uri_dir: Path | None) -> str:
    """A path relative to the image root for a path, file:// URL or data: URI."""
    if ref.startswith("data:"):
        return _data_uri_image(ref, image_root, data_uri_dir)
    if ref.startswith(("http://", "https://")):
        raise Problem("missing_image", f"remote image {ref[:80]!r} is not fetched; "
                      "download it under the image root")
    return relative_ref(ref.removeprefix("file://"), image_root)


def _data_uri_image(ref: str, image_root: Path, data_uri_dir: Path | None) -> str:
    if data_uri_dir is None:
        raise Problem("bad_record", "a data: URI image needs data_uri_dir (a folder inside the "
                      "image root to write it to)")
    header, sep, payload = ref.partition(",")
    if not sep or not header.endswith(";base64") or not header[5:].startswith(("image/", ";")):
        raise Problem("unreadable_image", f"unsupported data URI {header[:60]!r}: "
                      "expected data:image/...;base64,")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise Problem("unreadable_image", f"data URI is not valid base64 ({err})") from None
    if not data:
        raise Problem("unreadable_image", "data URI holds no bytes")
    return cache_image_bytes(data, data_uri_dir, image_root)

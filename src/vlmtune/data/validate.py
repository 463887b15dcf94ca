"""Check conversation records before training: every rejection carries a stable reason code.

A conversation record is ``{"id": str, "image": str | [str] | absent, "conversations":
[{"from": "human" | "gpt", "value": str}, ...], "meta": {...}}``. Turns alternate human, gpt,
starting with human and ending with gpt; the human turns hold one ``<image>`` per image; image
paths are relative to the image root and must resolve inside it.

Image files are judged without trusting their paths: a path that is absolute, has a ``..``
component, or resolves (through symlinks) outside the root is rejected before anything is
opened. Inside the root only the header is read for the size; truncation is caught by PNG's
chunk check or a reduced (1/8 scale) JPEG decode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import IO

from PIL import Image

from vlmtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

REASONS = (
    "bad_json",
    "bad_record",
    "missing_image",
    "unreadable_image",
    "image_too_small",
    "image_too_large",
    "path_escape",
    "bad_roles",
    "empty_turn",
    "image_count_mismatch",
    "invalid_answer",
    "duplicate_id",
    "too_long",
)
IMAGE_TOKEN = "<image>"
ROLES = ("human", "gpt")
ON_INVALID = ("drop", "raise")
RECORD_KEYS = ("id", "image", "conversations", "meta")

HINTS = {
    "bad_json": "the line is not valid UTF-8 JSON (or CSV); fix or remove it",
    "bad_record": 'expected {"id": str, "image": str | [str], '
    '"conversations": [{"from": ..., "value": str}], "meta": {...}}',
    "missing_image": "image paths are relative to the dataset's image root; check the file exists",
    "unreadable_image": "the file is empty, truncated or not an image; re-fetch or remove it",
    "image_too_small": "images must be at least min_side pixels on each side",
    "image_too_large": "images must stay within max_side and max_pixels",
    "path_escape": "image paths must be relative, without '..', and stay inside the image root "
    "(symlinks included)",
    "bad_roles": "turns must alternate human, gpt, ... starting with human and ending with gpt",
    "empty_turn": "every turn needs some text",
    "image_count_mismatch": "human turns need one <image> placeholder per image, gpt turns none",
    "invalid_answer": "meta.answer_index must be a choice index 0..len(meta.choices)-1",
    "duplicate_id": "record ids must be unique within a dataset",
    "too_long": "shorten the record or raise the token limit",
}


class Problem(Exception):
    """A record's problem before it is located; ``at(file, line)`` makes the DataError."""

    def __init__(self, reason: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.hint = reason, message, hint

    def at(self, file: str | None, line: int | None) -> DataError:
        return reject(self.reason, self.message, file=file, line=line, hint=self.hint)


def reject(reason: str, message: str, *, file: str | None, line: int | None,
           hint: str | None = None) -> DataError:
    """A DataError with the reason's hint (or ``hint``); ``.detail`` keeps the bare message
    for drop logs."""
    err = DataError(message, reason=reason, file=file, line=line,
                    hint=hint or HINTS.get(reason))
    err.detail = message
    return err


@dataclass(frozen=True)
class ImageLimits:
    """Accepted image sizes: each side in [min_side, max_side], width*height <= max_pixels."""

    min_side: int = 8
    max_side: int = 16384
    max_pixels: int = 178_956_970

    def __post_init__(self) -> None:
        for name in ("min_side", "max_side", "max_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"image limit {name}={value!r} must be a positive integer")
        if self.min_side > self.max_side:
            raise ConfigError(f"image limits: min_side={self.min_side} > max_side={self.max_side}")


def check_answer_index(value: object, num_choices: int | None) -> int:
    """The index from an int or an ASCII digit string ("0".."n-1"); DataError(invalid_answer)."""
    index = _answer_index(value, num_choices)
    if index is None:
        bound = "a non-negative index" if num_choices is None else f"an index 0..{num_choices - 1}"
        raise DataError(f"answer {value!r} is not {bound}", reason="invalid_answer",
                        hint=HINTS["invalid_answer"])
    return index


def _answer_index(value: object, num_choices: int | None) -> int | None:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    if num_choices is not None and value >= num_choices:
        return None
    return value


class RecordValidator:
    """Checks records one by one; remembers ids (for ``duplicate_id``) and image verdicts.

    ``image_dir`` (``dataset.image_dir``, the image root's path inside ``dataset_root``): a
    record path that already starts with it (``images/x.png`` with ``image_dir=images``) and is
    missing under the image root is found under the dataset root and rewritten relative to the
    image root; a path found only elsewhere under the dataset root gets a hint naming the key.
    """

    def __init__(
        self,
        image_root: Path,
        *,
        limits: ImageLimits | None = None,
        max_tokens: int | None = None,
        count_tokens: Callable[[dict], int] | None = None,
        dataset_root: Path | None = None,
        image_dir: str = "",
    ) -> None:
        if max_tokens is not None and count_tokens is None:
            raise ConfigError("max_tokens needs count_tokens to measure records")
        self.root = Path(image_root).resolve()
        self.dataset_root = Path(dataset_root).resolve() if dataset_root is not None else None
        self.image_dir = [p for p in re.split(r"[\\/]", image_dir) if p not in ("", ".")]
        self.limits = limits or ImageLimits()
        self.max_tokens, self.count_tokens = max_tokens, count_tokens
        self._seen: set[str] = set()
        self._verdicts: dict[Path, Problem | None] = {}

    def check(self, record: object, *, file: str, line: int) -> dict:
        """The record, normalised (id as str, meta as dict); DataError if it is rejected."""
        try:
            return self._check(record)
        except Problem as p:
            raise p.at(file, line) from None

    def _check(self, record: object) -> dict:
        if not isinstance(record, dict):
            raise Problem("bad_record", f"record is a {type(record).__name__}, not an object")
        rid = _record_id(record.get("id"))
        turns = _turns(record.get("conversations"))
        images = _images(record.get("image"))
        meta = record.get("meta")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise Problem("bad_record", "meta must be an object")

        for i, turn in enumerate(turns):
            if turn["from"] != ROLES[i % 2]:
                raise Problem(
                    "bad_roles", f"turn {i} is from {turn['from']!r}, expected {ROLES[i % 2]!r}"
                )
        if len(turns) % 2:
            raise Problem("bad_roles", "the last turn is from 'human'; it needs a 'gpt' answer")
        for i, turn in enumerate(turns):
            if not turn["value"].strip():
                raise Problem("empty_turn", f"turn {i} ({turn['from']}) has no text")
        placeholders = sum(t["value"].count(IMAGE_TOKEN) for t in turns[::2])
        if any(IMAGE_TOKEN in t["value"] for t in turns[1::2]):
            raise Problem("image_count_mismatch", f"a gpt turn contains {IMAGE_TOKEN}")
        if placeholders != len(images):
            raise Problem(
                "image_count_mismatch",
                f"{placeholders} {IMAGE_TOKEN} placeholder(s) for {len(images)} image(s)",
            )
        meta = _checked_answer(meta)
        if rid in self._seen:
            raise Problem("duplicate_id", f"id {rid!r} was already used by an earlier record")

        refs = []
        for rel in images:
            path = self._inside_root(rel)
            verdict = self._verdict(path)
            used = rel
            if verdict is not None and verdict.reason == "missing_image":
                used, path, verdict = self._beside_image_dir(rel, path, verdict)
            if verdict is not None:
                raise Problem(verdict.reason, f"image {rel!r} (tried {path}): {verdict.message}",
                              verdict.hint)
            refs.append(used)

        out = {"id": rid}
        if images:
            out["image"] = refs[0] if isinstance(record["image"], str) else refs
        out["conversations"] = turns
        out["meta"] = meta
        out.update((k, v) for k, v in record.items() if k not in RECORD_KEYS)
        if self.max_tokens is not None and self.count_tokens is not None:
            n = self.count_tokens(out)
            if n > self.max_tokens:
                raise Problem("too_long", f"{n} tokens > max_tokens={self.max_tokens}")
        self._seen.add(rid)
        return out

    def _verdict(self, path: Path) -> Problem | None:
        verdict = self._verdicts.get(path, ...)
        if verdict is ...:
            verdict = self._verdicts[path] = self._image_problem(path)
        return verdict

    def _beside_image_dir(self, rel: str, tried: Path,
                          verdict: Problem) -> tuple[str, Path, Problem | None]:
        """A missing image looked up under the dataset root: (path to keep, file, verdict)."""
        if self.dataset_root is None or not self.image_dir:
            return rel, tried, verdict
        parts = [p for p in re.split(r"[\\/]", rel) if p not in ("", ".")]
        k = len(self.image_dir)
        if parts[:k] == self.image_dir and len(parts) > k:  # the record repeats image_dir
            stripped = "/".join(parts[k:])
            path = self._inside_root(stripped)
            found = self._verdict(path)
            if found is None or found.reason != "missing_image":
                return stripped, path, found
        alt = (self.dataset_root / rel).resolve()
        if alt.is_relative_to(self.dataset_root) and alt.is_file():
            image_dir = "/".join(self.image_dir)
            return rel, tried, Problem(
                "missing_image", f"not found there, but {alt} exists",
                hint=f"image paths are relative to dataset.image_dir={image_dir!r}; set "
                "dataset.image_dir='' if the records' paths are relative to dataset.root")
        return rel, tried, verdict

    def _inside_root(self, rel: str) -> Path:
        """The resolved path of an image, or path_escape; opens nothing."""
        if (
            os.path.isabs(rel)
            or rel.startswith(("/", "\\"))
            or PureWindowsPath(rel).drive
            or ".." in re.split(r"[\\/]", rel)
        ):
            raise Problem("path_escape", f"image {rel!r} is not a relative path inside the root")
        try:
            path = (self.root / rel).resolve()
        except (OSError, RuntimeError, ValueError) as err:  # symlink loops, odd names
            raise Problem("missing_image", f"image {rel!r} under {self.root} cannot be "
                          f"resolved ({err})") from None
        if not path.is_relative_to(self.root):
            raise Problem("path_escape", f"image {rel!r} resolves to {path}, outside the image "
                          f"root {self.root}")
        return path

    def _image_problem(self, path: Path) -> Problem | None:
        """None if the file is a readable image within the limits, else the problem."""
        try:
            st = os.stat(path)
        except (OSError, ValueError) as err:
            return Problem("missing_image", f"not found ({type(err).__name__})")
        if not stat.S_ISREG(st.st_mode):
            return Problem("missing_image", "not a regular file")
        if st.st_size == 0:
            return Problem("unreadable_image", "the file is empty")
        try:
            with open(path, "rb") as f:
                return self._inspect(f)
        except OSError as err:
            return Problem("unreadable_image", f"cannot be opened ({err.strerror or err})")

    def _inspect(self, f: IO[bytes]) -> Problem | None:
        lim = self.limits
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                with Image.open(f) as im:  # reads the header only
                    (w, h), fmt = im.size, im.format
            except Image.DecompressionBombError:
                return Problem("image_too_large", "far more pixels than PIL accepts")
            except Exception as err:  # PIL plugins raise many types on hostile headers
                return Problem("unreadable_image", f"not a readable image ({err})")
            if min(w, h) < lim.min_side:
                return Problem("image_too_small", f"{w}x{h} has a side below {lim.min_side}")
            if max(w, h) > lim.max_side or w * h > lim.max_pixels:
                return Problem(
                    "image_too_large",
                    f"{w}x{h} exceeds max_side={lim.max_side} or max_pixels={lim.max_pixels}",
                )
            try:
                _check_integrity(f, fmt)
            except Exception as err:  # truncated or corrupt data surfaces as assorted errors
                return Problem("unreadable_image", f"truncated or corrupt {fmt} ({err})")
        return None


def _check_integrity(f: IO[bytes], fmt: str | None) -> None:
    """Raise if the image data is truncated or corrupt, decoding as little as possible."""
    f.seek(0)
    with Image.open(f) as im:
        im.verify()  # PNG: every chunk's CRC up to IEND, without inflating
    if fmt == "PNG":
        return
    f.seek(0)
    with Image.open(f) as im:
        if fmt == "JPEG":
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
        im.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES stays off)


def _record_id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Problem("bad_record", f"id must be a string, got {type(value).__name__}")
    rid = str(value)
    if not rid.strip():
        raise Problem("bad_record", "id is empty")
    return rid


def _turns(value: object) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise Problem("bad_record", "conversations must be a non-empty list of turns")
    turns = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise Problem("bad_record", f"turn {i} is not an object")
        role, text = turn.get("from"), turn.get("value")
        if not isinstance(role, str) or not isinstance(text, str):
            raise Problem("bad_record", f"turn {i} needs string 'from' and 'value'")
        turns.append(dict(turn))
    return turns


def _images(value: object) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
        raise Problem("bad_record", "image must be a path or a list of paths")
    for p in items:
        if not p or "\0" in p:
            raise Problem("bad_record", f"image path {p!r} is empty or contains NUL")
    return list(items)


def _checked_answer(meta: dict) -> dict:
    """meta.answer_index (int or digit string) must index meta.choices when both are given."""
    if "answer_index" not in meta:
        return meta
    choices = meta.get("choices")
    n = len(choices) if isinstance(choices, list) else None
    index = _answer_index(meta["answer_index"], n)
    if index is None:
        bound = "a non-negative index" if n is None else f"an index 0..{n - 1}"
        raise Problem("invalid_answer", f"answer_index {meta['answer_index']!r} is not {bound}")
    return {**meta, "answer_index": index}


class DropLog:
    """Counts rejected records per reason and writes each one (reason, file, line, message,
    record) as a JSON line to ``path`` when one is given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.counts: Counter[str] = Counter()
        self._out: IO[str] | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def add(self, err: DataError, record: object = None) -> None:
        self.counts[err.reason] += 1
        log.debug("dropped: %s", err)
        if self.path is None:
            return
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        entry = {
            "reason": err.reason,
            "file": err.file,
            "line": err.line,
            "message": getattr(err, "detail", str(err)),
            "record": record,
        }
        self._out.write(json.dumps(entry, ensure_ascii=False, default=repr) + "\n")

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
        elif self.path is not None:  # an empty log still says "nothing was dropped"
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("", encoding="utf-8")

    def __enter__(self) -> DropLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def validate_records(
    items: Iterable[tuple[str, int, dict | DataError]],
    validator: RecordValidator,
    *,
    on_invalid: str = "drop",
    drops: DropLog | None = None,
) -> Iterator[dict]:
    """Yield the valid records of an adapter's stream.

    ``on_invalid="raise"`` raises the first DataError (its message names file, line and
    reason); ``"drop"`` counts it in ``drops`` and goes on.
    """
    if on_invalid not in ON_INVALID:
        raise ConfigError(f"dataset.on_invalid={on_invalid!r}: use one of {list(ON_INVALID)}")
    for file, line, item in items:
        try:
            if isinstance(item, DataError):
                raise item
            yield validator.check(item, file=file, line=line)
        except DataError as err:
            if on_invalid == "raise":
                raise
            if drops is not None:
                drops.add(err, None if isinstance(item, DataError) else item)

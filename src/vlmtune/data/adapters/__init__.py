"""Adapters: stream a source dataset as conversation records.

Each adapter module has ``iter_records(source, **options) -> Iterator[(file, line, item)]``
where ``item`` is a conversation record (not yet validated: see ``vlmtune.data.validate``) or a
DataError for a line that cannot be read at all (``bad_json``) or converted. Lines are 1-based:
the file's line for JSONL and CSV, the record's index for a JSON array or a dataset's row.

The helpers here are shared by the adapters; the registry is at the bottom.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import os
import posixpath
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from PIL import Image

from vlmtune.data.validate import IMAGE_TOKEN, Problem, reject
from vlmtune.errors import ConfigError, DataError

Item = tuple[str, int, "dict | DataError"]
QA_COLUMNS = ("id", "image", "question", "answer")
FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
                 "TIFF": ".tif"}


def iter_json_values(source: Path) -> Iterator[tuple[str, int, object]]:
    """(file, line, value | DataError) for a JSONL file (streamed line by line) or a JSON array
    file (loaded whole; ``line`` is the 1-based index). Blank JSONL lines are skipped."""
    source = Path(source)
    file = str(source)
    if not source.is_file():
        raise DataError(f"{source} is not a file", reason="missing_file", file=file)
    if source.suffix != ".jsonl" and _first_byte(source) == b"[":
        yield from _iter_json_array(source)
        return
    with open(source, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield file, n, reject("bad_json", f"not UTF-8 (byte {err.start + 1} of the line)",
                                      file=file, line=n)
                continue
            try:
                yield file, n, json.loads(text)
            except json.JSONDecodeError as err:
                yield file, n, reject("bad_json", f"invalid JSON at column {err.colno}: {err.msg}",
                                      file=file, line=n)
            except RecursionError:
                yield file, n, reject("bad_json", "JSON nested too deeply", file=file, line=n)


def _first_byte(source: Path) -> bytes:
    with open(source, "rb") as f:
        head = f.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
    return head[:1]


def _iter_json_array(source: Path) -> Iterator[tuple[str, int, object]]:
    file = str(source)
    data = source.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        values = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        yield file, line, reject("bad_json", "not UTF-8", file=file, line=line)
        return
    except json.JSONDecodeError as err:
        yield file, err.lineno, reject(
            "bad_json", f"invalid JSON at column {err.colno}: {err.msg}", file=file, line=err.lineno
        )
        return
    except RecursionError:
        yield file, 1, reject("bad_json", "JSON nested too deeply", file=file, line=1)
        return
    for n, value in enumerate(values, start=1):
        yield file, n, value


def converted(file: str, line: int, convert: Callable[[], dict]) -> Item:
    """(file, line, convert()) with a Problem turned into a located DataError."""
    try:
        return file, line, convert()
    except Problem as p:
        return file, line, p.at(file, line)


def default_id(source: Path, line: int) -> str:
    """The id given to a record that has none: unique within the dataset's files."""
    return f"{Path(source).stem}-{line}"


def check_options(adapter: str, given: dict, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"dataset.columns: {unknown} not understood by the {adapter!r} adapter; "
            f"it maps {list(allowed)}"
        )


def inside_dir(path: Path, root: Path, key: str) -> Path:
    """``path`` made absolute; ConfigError naming ``key`` unless it lies under ``root``."""
    path, root = Path(path).resolve(), Path(root).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{key}={str(path)!r} must be inside the image root {str(root)!r}")
    return path


def relative_ref(ref: str, image_root: Path) -> str:
    """An absolute path under ``image_root`` (lexically) made relative; others unchanged."""
    if os.path.isabs(ref) and ".." not in PurePosixPath(ref).parts:
        root = Path(image_root).absolute()
        if Path(ref).is_relative_to(root):
            return Path(ref).relative_to(root).as_posix()
    return ref


def cache_image_bytes(data: bytes, cache_dir: Path, image_root: Path) -> str:
    """Write image bytes once to ``cache_dir/<content hash><suffix>``; the path relative to the
    image root (which must contain ``cache_dir``)."""
    digest = hashlib.blake2b(data, digest_size=16).hexdigest()
    cache_dir = Path(cache_dir)
    path = cache_dir / (digest + _image_suffix(data))
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return path.resolve().relative_to(Path(image_root).resolve()).as_posix()


def _image_suffix(data: bytes) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
        except Exception:  # not an image: keep the bytes, the validator will say so
            return ".bin"
    return FORMAT_SUFFIX.get(fmt, "." + fmt.lower() if fmt.isalnum() else ".bin")


def qa_record(
    rid: str, question: object, answer: object, images: list[str], meta: dict
) -> dict:
    """A one-question record; ``<image>`` lines go first unless the question places them."""
    if isinstance(question, str) and IMAGE_TOKEN not in question:
        question = f"{IMAGE_TOKEN}\n" * len(images) + question
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    rec: dict = {"id": rid}
    if images:
        rec["image"] = images[0] if len(images) == 1 else images
    rec["conversations"] = [
        {"from": "human", "value": question},
        {"from": "gpt", "value": answer},
    ]
    rec["meta"] = meta
    return rec


def plain_values(row: dict, skip: set[str]) -> dict:
    """The row's other columns whose values are JSON scalars or lists of them (for meta)."""
    def plain(v: object) -> bool:
        return isinstance(v, str | int | float | bool | type(None))

    return {
        k: v
        for k, v in row.items()
        if isinstance(k, str) and k not in skip and v is not None
        and (plain(v) or (isinstance(v, list) and all(plain(x) for x in v)))
    }


def join_image_dir(image_dir: str, ref: str) -> str:
    return posixpath.join(image_dir, ref) if image_dir else ref


# The registry; imported last because the adapters use the helpers above.
from vlmtune.data.adapters import csv_folder, foodieqa, hf, llava, sharegpt  # noqa: E402

ADAPTERS: dict[str, Callable[..., Iterator[Item]]] = {
    "foodieqa": foodieqa.iter_records,
    "llava": llava.iter_records,
    "sharegpt": sharegpt.iter_records,
    "hf": hf.iter_records,
    "csv": csv_folder.iter_records,
}


def get_adapter(name: str) -> Callable[..., Iterator[Item]]:
    """The adapter's ``iter_records``; ConfigError naming ``dataset.adapter`` if unknown."""
    if name not in ADAPTERS:
        raise ConfigError(f"dataset.adapter={name!r} is unknown; use one of {sorted(ADAPTERS)}")
    return ADAPTERS[name]

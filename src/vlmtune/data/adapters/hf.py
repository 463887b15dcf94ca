"""Hugging Face datasets on local disk: a ``save_to_disk`` folder, or parquet / arrow files.

Rows are read one by one without decoding images: an ``Image`` value arrives as
``{"bytes", "path"}``. Its path is used when it names a file under the image root (and, if bytes
are embedded too, one of the same size); otherwise the bytes are written to ``cache_dir``
(inside the image root) under their content hash. Plain string columns are taken as paths.
Columns are mapped with ``id=``, ``image=``, ``question=``, ``answer=`` (``None`` switches an
optional one off); other plain columns go to ``meta``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image

from vlmtune.data.adapters import (
    QA_COLUMNS,
    Item,
    cache_image_bytes,
    check_options,
    converted,
    default_id,
    inside_dir,
    plain_values,
    qa_record,
    relative_ref,
)
from vlmtune.data.validate import Problem
from vlmtune.errors import ConfigError, DataError

BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
BATCH = 64


def iter_records(
    source: Path,
    *,
    image_root: Path | None = None,
    cache_dir: Path | None = None,
    split: str | None = None,
    **columns: str | None,
) -> Iterator[Item]:
    """(file, line = row number, record | DataError) for each row of a local HF dataset.

    ``image_root`` defaults to ``source`` (a folder) or its folder; ``cache_dir`` must be inside
    it and is needed only for images that exist as bytes alone.
    """
    check_options("hf", columns, QA_COLUMNS)
    source = Path(source)
    cols = {c: columns.get(c, c) for c in QA_COLUMNS}
    image_root = Path(image_root) if image_root is not None else (
        source if source.is_dir() else source.parent)
    if cache_dir is not None:
        cache_dir = inside_dir(cache_dir, image_root, "cache_dir")
    rows, names, label = _open_rows(source, split)
    if names is not None:
        _check_columns(cols, columns, names, source)
    file = str(source)
    for n, row in enumerate(rows, start=1):
        yield converted(file, n, lambda r=row, n=n: _row_record(
            r, cols, default_id(Path(label), n), image_root, cache_dir))


def _check_columns(cols: dict, given: dict, names: list[str], source: Path) -> None:
    for key, name in cols.items():
        required = key in ("question", "answer") or key in given
        if name is not None and name not in names and required:
            raise ConfigError(
                f"dataset.columns.{key}={name!r} is not a column of {source.name} "
                f"(columns: {names})"
            )


def _open_rows(
    source: Path, split: str | None
) -> tuple[Iterable[dict], list[str] | None, str]:
    """Rows (plain dicts, images undecoded), the column names when known, and the prefix of
    default ids (the source's name, plus the split of a DatasetDict)."""
    import datasets  # heavy: only when this adapter runs

    if (source / "state.json").is_file() or (source / "dataset_dict.json").is_file():
        ds = datasets.load_from_disk(str(source))
        label = source.name
        if isinstance(ds, datasets.DatasetDict):
            split = _pick_split(list(ds), split, source)
            ds, label = ds[split], f"{source.name}-{split}"
        return _arrow_rows(ds), list(ds.column_names), label

    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix in BUILDERS)
    else:
        files = [source] if source.is_file() else []
    builders = {BUILDERS.get(p.suffix) for p in files}
    if not files or None in builders or len(builders) != 1:
        raise DataError(
            f"{source} is not a save_to_disk folder nor parquet / arrow file(s)",
            reason="missing_file", file=str(source),
            hint="point dataset.root at a Dataset.save_to_disk folder or .parquet/.arrow files",
        )
    if split not in (None, "train"):
        raise ConfigError(f"dataset.split={split!r}: data files form a single 'train' split")
    ds = datasets.load_dataset(
        builders.pop(), data_files=[str(p) for p in files], split="train", streaming=True
    ).decode(False)
    names = ds.column_names
    return ds, list(names) if names is not None else None, source.stem


def _pick_split(splits: list[str], split: str | None, source: Path) -> str:
    if split is None:
        if "train" in splits or len(splits) == 1:
            return "train" if "train" in splits else splits[0]
        raise ConfigError(f"dataset.split must name one of {splits} of {source}")
    if split not in splits:
        raise ConfigError(f"dataset.split={split!r} is not in {source} (splits: {splits})")
    return split


def _arrow_rows(ds) -> Iterator[dict]:
    """Rows of a map-style Dataset straight from Arrow (no feature decoding)."""
    for batch in ds.with_format("arrow").iter(batch_size=BATCH):
        yield from batch.to_pylist()


def _row_record(
    row: dict, cols: dict, rid: str, image_root: Path, cache_dir: Path | None
) -> dict:
    def column(key: str) -> object:
        name = cols[key]
        if name is None or name not in row:
            if key in ("question", "answer"):
                raise Problem("bad_record", f"row has no {key} column {name!r}")
            return None
        return row[name]

    value = column("id")
    if value is not None:
        rid = value  # the validator turns an int into a string and rejects other types
    images = _images(column("image"), image_root, cache_dir)
    meta = plain_values(row, {c for c in cols.values() if c is not None})
    return qa_record(rid, column("question"), column("answer"), images, meta)


def _images(value: object, image_root: Path, cache_dir: Path | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [ref for v in value for ref in _images(v, image_root, cache_dir)]
    if isinstance(value, str):
        return [relative_ref(value, image_root)]
    if isinstance(value, Image.Image):
        value = {"bytes": _encode(value), "path": getattr(value, "filename", None) or None}
    if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
        data, path = value.get("bytes"), value.get("path")
        if isinstance(path, str) and path:
            ref = relative_ref(path, image_root)
            if _usable(ref, image_root, data):
                return [ref]
        if isinstance(data, bytes) and data:
            if cache_dir is None:
                raise Problem("bad_record", "an embedded image needs cache_dir (a folder inside "
                              "the image root to write it to)")
            return [cache_image_bytes(data, cache_dir, image_root)]
        if isinstance(path, str) and path:
            return [relative_ref(path, image_root)]  # the validator says what is wrong with it
    raise Problem("bad_record", f"cannot read an image from a {type(value).__name__} value")


def _usable(ref: str, image_root: Path, data: object) -> bool:
    """A relative path naming a file under the root (of the embedded bytes' size, if any)."""
    if Path(ref).is_absolute() or ".." in Path(ref).parts:
        return False
    try:
        size = (Path(image_root) / ref).stat().st_size
    except (OSError, ValueError):
        return False
    return not isinstance(data, bytes) or size == len(data)


def _encode(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=im.format or "PNG")
    return buf.getvalue()

"""A CSV (``.csv``) or TSV (``.tsv`` / ``.tab``) table beside an image folder.

Columns are mapped with ``id=``, ``image=``, ``question=``, ``answer=`` (``None`` switches an
optional one off); the other columns go to ``meta``. An image cell is one path, or a JSON list
of paths; ``image_dir`` (relative to the image root) is put in front of each. Rows are streamed
with ``csv.DictReader``; ``line`` is the file line where the row starts. A row whose lines are
not UTF-8, or that the csv module cannot parse, is reported as ``bad_json``.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vlmtune.data.adapters import (
    QA_COLUMNS,
    Item,
    check_options,
    converted,
    default_id,
    join_image_dir,
    plain_values,
    qa_record,
)
from vlmtune.data.validate import Problem, reject
from vlmtune.errors import ConfigError, DataError

DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def iter_records(source: Path, *, image_dir: str = "", **columns: str | None) -> Iterator[Item]:
    """(file, line, record | DataError) for each row of a CSV / TSV file."""
    check_options("csv", columns, QA_COLUMNS)
    source = Path(source)
    delimiter = DELIMITERS.get(source.suffix.lower())
    if delimiter is None:
        raise ConfigError(f"dataset.root: {source.name} must end in one of {list(DELIMITERS)}")
    if not source.is_file():
        raise DataError(f"{source} is not a file", reason="missing_file", file=str(source))
    cols = {c: columns.get(c, c) for c in QA_COLUMNS}
    file = str(source)
    with open(source, "rb") as f:
        lines = _Lines(f)
        reader = csv.DictReader(lines, delimiter=delimiter)
        header = reader.fieldnames or []
        if lines.bad:
            raise DataError("the header line is not UTF-8", reason="bad_json", file=file, line=1)
        _check_columns(cols, columns, header, source)
        end = reader.line_num
        while True:
            try:
                row = next(reader)
                error = None
            except StopIteration:
                return
            except csv.Error as err:
                row, error = None, str(err)
            first, end, bad = lines.span(end + 1, reader.line_num)
            if bad:
                yield file, first, reject("bad_json", "not UTF-8", file=file, line=first)
            elif row is None:
                yield file, first, reject("bad_json", f"CSV: {error}", file=file, line=first)
            else:
                yield converted(file, first, lambda r=row, n=first: _row_record(
                    r, cols, default_id(source, n), image_dir))


def _check_columns(cols: dict, given: dict, header: list[str], source: Path) -> None:
    for key, name in cols.items():
        required = key in ("question", "answer") or key in given
        if name is not None and name not in header and required:
            raise ConfigError(
                f"dataset.columns.{key}={name!r} is not a column of {source.name} "
                f"(columns: {header})"
            )


class _Lines:
    """Decoded lines of a binary file for the csv module, remembering which physical lines were
    blank or not UTF-8 since the last row (the reader asks for exactly one row's lines)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.n = f, 0
        self.bad: set[int] = set()
        self.blank: set[int] = set()

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        raw = next(self._f)
        self.n += 1
        if self.n == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.bad.add(self.n)
            text = raw.decode("utf-8", errors="replace")
        if not text.strip("\r\n"):
            self.blank.add(self.n)
        return text

    def span(self, start: int, end: int) -> tuple[int, int, bool]:
        """(first non-blank line, last line, any line not UTF-8) of lines start..end; resets."""
        first = next((n for n in range(start, end + 1) if n not in self.blank), end)
        bad = any(start <= n <= end for n in self.bad)
        self.bad.clear()
        self.blank.clear()
        return first, end, bad


def _row_record(row: dict, cols: dict, rid: str, image_dir: str) -> dict:
    if None in row:
        raise Problem("bad_record", f"row has {len(row[None])} more field(s) than the header")

    def cell(key: str) -> str | None:
        name = cols[key]
        return row.get(name) if name is not None else None

    if cell("id"):
        rid = cell("id")
    images = [join_image_dir(image_dir, ref) for ref in _image_refs(cell("image"))]
    meta = plain_values(row, {c for c in cols.values() if c is not None})
    return qa_record(rid, cell("question"), cell("answer"), images, meta)


def _image_refs(value: str | None) -> list[str]:
    if value is None or not value.strip():
        return []
    value = value.strip()
    if not value.startswith("["):
        return [value]
    try:
        refs = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        raise Problem("bad_record", f"image cell {value[:60]!r} is not a JSON list") from None
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise Problem("bad_record", "an image cell's JSON list must hold paths")
    return refs

"""Outputs that appear whole or not at all: written to ``OUT.tmp``, renamed into place."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vlmtune.errors import CheckpointError


def tmp_path_for(out: Path) -> Path:
    return out.with_name(out.name + ".tmp")


@contextmanager
def staged_output(out: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty ``OUT.tmp`` to write into; on success it becomes ``out``.

    An existing ``out`` is refused unless ``force``; a stale ``OUT.tmp`` (an interrupted
    earlier run) is removed first. On an exception the temporary directory is removed, so an
    interrupted or failed conversion never leaves ``out`` behind.
    """
    out = Path(out)
    if out.exists() and not force:
        raise CheckpointError(f"{out} already exists; pass --force to overwrite it")
    tmp = tmp_path_for(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)

"""Lineage of a prepared dataset: the source's content fingerprint and ``manifest.json``.

The fingerprint covers the bytes of the data file(s) and of every image the records name, so
it changes when any record or image changes. It reads nothing outside the dataset root: an image
path that is absolute, has ``..`` or resolves (through symlinks) outside the root is left out
(ingest rejects its record as ``path_escape``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from vlmtune.data.fingerprint import fingerprint_files

MANIFEST_VERSION = 2


def image_refs(value: object) -> list[str]:
    """The image paths of a record's ``image`` value (a path or a list of paths)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def fingerprint_source(
    root: Path, image_root: Path, data_files: Iterable[str], items: Iterable[tuple]
) -> str:
    """blake2b over the data files and the images named by the adapter's ``items`` stream.

    ``data_files`` are relative to ``root``; image paths to ``image_root`` (inside root).
    """
    refs: set[str] = set()
    for _, _, item in items:
        if isinstance(item, dict):
            refs.update(image_refs(item.get("image")))
    real_root = Path(os.path.realpath(root))
    rel_images = []
    for ref in refs:
        parts = ref.replace("\\", "/").split("/")
        if not ref or "\0" in ref or os.path.isabs(ref) or ".." in parts:
            continue
        path = Path(image_root) / ref
        if not path.exists() and (Path(root) / ref).is_file():  # a path repeating image_dir
            path = Path(root) / ref
        if not Path(os.path.realpath(path)).is_relative_to(real_root):
            continue
        rel_images.append(Path(os.path.relpath(path, root)).as_posix())
    return fingerprint_files(root, [*data_files, *rel_images])


def build_manifest(
    *,
    card: dict,
    source: dict,
    fingerprint: str,
    prepared_key: str,
    counts: dict[str, int],
    drops: dict[str, int],
    split: dict,
    token_check: dict,
    rejected: str | None,
) -> dict:
    """The manifest: where the data came from, what was kept, dropped and held out, licence."""
    return {
        "version": MANIFEST_VERSION,
        "name": card.get("name"),
        **source,
        "card": card,
        "license": card.get("license"),
        "usage": card.get("usage"),
        "fingerprint": fingerprint,
        "prepared_key": prepared_key,
        "counts": counts,
        "drops": dict(sorted(drops.items())),
        "rejected": rejected,
        "split": split,
        "token_check": token_check,
    }


def write_manifest(path: Path, manifest: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)

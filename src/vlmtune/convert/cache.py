"""An official checkpoint used as ``model.path``: converted once into the cache, then reused.

The copy lives in ``<cache_dir>/converted/<digest>/``, the digest taken over the source's
``config.json`` content and the names, sizes and modification times of its files, so editing
or replacing the checkpoint converts it again while an unchanged one is found at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path

from vlmtune.convert.official_config import is_official
from vlmtune.errors import ConfigError

log = logging.getLogger(__name__)


def source_digest(src: Path) -> str:
    src = Path(src)
    digest = hashlib.sha256((src / "config.json").read_bytes())
    for path in sorted(src.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def is_official_dir(path: Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and is_official(json.loads(config.read_text()))


def native_model_dir(path: Path, cache_dir: str | Path | None) -> Path:
    """``path`` itself, or for an official InternVL checkpoint its native copy in the cache
    (converted now if it is not there yet)."""
    path = Path(path)
    if not is_official_dir(path):
        return path
    if cache_dir is None:
        raise ConfigError(f"model.path={str(path)!r} is an official InternVL checkpoint and no "
                          "cache_dir is set to convert it into; convert it with `vlmtune "
                          "checkpoint to-hf` and point model.path at the result")
    out = Path(cache_dir) / "converted" / source_digest(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run waits for the one converting
        if (out / "config.json").exists():
            log.info("model.path %s is in the official InternVL layout; using its converted "
                     "copy %s", path, out)
            return out
        from vlmtune.convert.official import to_native_dir

        log.info("model.path %s is in the official InternVL layout; converting it once into "
                 "%s", path, out)
        return to_native_dir(path, out, force=True)

"""Ingest a dataset card: adapter → validate → split → train / held-out JSONL + manifest.

Records stream from the card's adapter one at a time: each is validated
(:class:`RecordValidator`), given a side and appended to ``train.jsonl`` or ``heldout.jsonl``,
so memory does not grow with the number of records. The side comes from a hash of the record's
group (``dataset.group_key``), so adding records never moves an earlier one, or from an explicit
``dataset.split_column`` / ``dataset.split_file``. Rejected records go to ``rejected.jsonl``
with their reason (written only when there are any). Finished outputs are cached under their
prepared key (source fingerprint + every option that shapes them): re-ingesting unchanged data
copies them back ("cache hit").
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vlmtune.config.registry import project_root
from vlmtune.config.schema import DatasetConfig
from vlmtune.data.adapters import Item, get_adapter
from vlmtune.data.manifest import build_manifest, fingerprint_source, image_refs, write_manifest
from vlmtune.data.prepared import MANIFEST, REJECTED, PreparedCache, SplitWriter, prepared_key
from vlmtune.data.prepared import publish as publish_files
from vlmtune.data.split import assign_split
from vlmtune.data.validate import DropLog, ImageLimits, RecordValidator, reject
from vlmtune.errors import ConfigError, DataError
from vlmtune.progress import progress_bar

log = logging.getLogger(__name__)

INGEST_VERSION = 1  # bump when the prepared files change for the same source and options
EMBEDDED_DIR = ".vlmtune-embedded"  # under the image root: images that came as bytes / data URIs
HF_DATA_SUFFIXES = (".arrow", ".parquet", ".json")
SPLIT_NAMES = {"train": "train", "training": "train", "heldout": "heldout",
               "held_out": "heldout", "held-out": "heldout", "test": "heldout",
               "val": "heldout", "valid": "heldout", "validation": "heldout", "dev": "heldout",
               "eval": "heldout"}
PROGRESS_EVERY = 256


@dataclass(frozen=True)
class Source:
    """A dataset on disk, ready to stream: ``open()`` gives a fresh adapter stream."""

    root: Path
    image_root: Path
    path: Path  # the data file (or folder) the adapter reads
    data_files: tuple[str, ...]  # relative to root: every file whose bytes define the records
    reader: str  # which adapter code reads it (part of the prepared key)
    open: Callable[[], Iterator[Item]]


@dataclass
class IngestResult:
    out_dir: Path
    manifest: dict
    cache_hit: bool

    @property
    def train_path(self) -> Path:
        return self.out_dir / "train.jsonl"

    @property
    def heldout_path(self) -> Path:
        return self.out_dir / "heldout.jsonl"

    @property
    def manifest_path(self) -> Path:
        return self.out_dir / MANIFEST

    @property
    def rejected_path(self) -> Path | None:
        return self.out_dir / REJECTED if self.manifest.get("rejected") else None


def dataset_root(cfg: DatasetConfig) -> Path:
    """``dataset.root`` made absolute; a relative root missing from the current directory is
    looked up under the project root (the bundled ``datasets/samples``)."""
    root = Path(cfg.root).expanduser()
    if not root.is_absolute() and not root.exists() and (project_root() / root).exists():
        root = project_root() / root
    return root.absolute()


def open_source(cfg: DatasetConfig) -> Source:
    """The card's source: checks the root and paths (all inside the root) and picks the adapter."""
    root = dataset_root(cfg)
    if not root.is_dir():
        raise DataError(f"dataset.root={cfg.root!r} does not exist or is not a directory",
                        reason="missing_root", hint="point dataset.root at a local copy")
    image_root = _inside(root, cfg.image_dir, "dataset.image_dir")
    if not image_root.is_dir():
        raise ConfigError(f"dataset.image_dir={cfg.image_dir!r} is not a folder of {root}")
    data_files: list[str] = []
    if cfg.split_file is not None:
        _inside(root, cfg.split_file, "dataset.split_file")
        data_files.append(cfg.split_file)
    if cfg.adapter == "foodieqa":
        task_file = _inside(root, f"{cfg.task}_tidy.json", f"dataset.task={cfg.task!r}: file")
        if not task_file.is_file():
            raise DataError(f"task file {task_file.name} not found in dataset.root {root}",
                            reason="missing_file", file=str(task_file),
                            hint="dataset.root must be the FoodieQA folder (*_tidy.json, images/)")
        adapter = get_adapter("foodieqa")

        def items() -> Iterator[Item]:
            return adapter(root, task=cfg.task, lang=cfg.lang, template=cfg.template)
        return Source(root, image_root, root, (task_file.name, *data_files), "adapters.foodieqa",
                      items)

    path = _inside(root, cfg.data_file or "", "dataset.data_file")
    if not path.exists():
        raise DataError(f"dataset.data_file={cfg.data_file!r} not found in dataset.root {root}",
                        reason="missing_file", file=str(path))
    adapter = get_adapter(cfg.adapter)
    kwargs: dict = dict(cfg.columns)
    if cfg.adapter == "sharegpt":
        kwargs.update(image_root=image_root, data_uri_dir=image_root / EMBEDDED_DIR)
    elif cfg.adapter == "hf":
        kwargs.update(image_root=image_root, cache_dir=image_root / EMBEDDED_DIR,
                      split=cfg.source_split)
    if path.is_dir():
        files = sorted(p.relative_to(root).as_posix() for p in path.rglob("*") if p.is_file()
                       and p.suffix in HF_DATA_SUFFIXES and EMBEDDED_DIR not in p.parts)
        data_files += [_inside(root, f, "dataset.data_file: file").relative_to(root).as_posix()
                       for f in files]
    else:
        data_files.append(path.relative_to(root).as_posix())

    def stream() -> Iterator[Item]:
        return adapter(path, **kwargs)
    return Source(root, image_root, path, tuple(data_files), f"adapters.{cfg.adapter}", stream)


def source_fingerprint(source: Source) -> str:
    """The content fingerprint: data file(s) + every image the records name."""
    return fingerprint_source(source.root, source.image_root, source.data_files, source.open())


def ingest_options(cfg: DatasetConfig, source: Source, token_check: dict) -> dict:
    """Everything besides the source content that shapes the prepared files."""
    return {
        "ingest_version": INGEST_VERSION,
        "root": str(source.root.resolve()),
        "image_root": str(source.image_root.resolve()),
        "reader": source.reader,
        "card": {"name": cfg.name, "license": cfg.license, "usage": cfg.usage},
        **{k: getattr(cfg, k) for k in (
            "adapter", "data_file", "task", "lang", "template", "columns", "source_split",
            "group_key", "split_column", "split_file", "heldout_fraction", "split_seed",
            "on_invalid", "min_image_side", "max_image_side", "max_image_pixels")},
        "token_check": token_check,
    }


def ingest_dataset(
    cfg: DatasetConfig,
    out_dir: Path,
    *,
    fingerprint: str | None = None,
    cache_dir: Path | None = None,
    count_tokens: Callable[[dict], int] | None = None,
    token_check: dict | None = None,
) -> IngestResult:
    """Prepare ``out_dir`` (train/heldout JSONL, manifest, rejected.jsonl if any) from the card.

    ``fingerprint``: the source fingerprint already computed (else computed here).
    ``cache_dir``: where finished outputs are kept by prepared key (None: no cache).
    ``count_tokens``: measures a record for ``dataset.max_tokens``; ``token_check`` describes it
    (or why it was skipped) for the manifest and the key.
    """
    source = open_source(cfg)
    if fingerprint is None:
        fingerprint = source_fingerprint(source)
    if token_check is None:
        token_check = {"max_tokens": cfg.max_tokens,
                       "status": "checked" if count_tokens else "not checked"}
    options = ingest_options(cfg, source, token_check)
    key = prepared_key(fingerprint, options)
    out_dir = Path(out_dir)
    cache = PreparedCache(cache_dir) if cache_dir is not None else None
    if cache is not None and (manifest := cache.restore(key, out_dir)) is not None:
        log.info("ingest %s: cache hit (prepared %s): %d train / %d held-out records, "
                 "source unchanged", cfg.name, key, manifest["counts"]["train"],
                 manifest["counts"]["heldout"])
        return IngestResult(out_dir, manifest, cache_hit=True)
    if cache is not None:
        log.info("ingest %s: cache miss (prepared %s), reading %s", cfg.name, key, source.path)

    work = out_dir.parent / f".{out_dir.name}.ingest-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        manifest = _prepare(cfg, source, work, fingerprint, key, count_tokens, token_check)
        if cache is not None:
            cache.store(key, work)
        publish_files(work, out_dir)
    except DataError as err:
        if err.reason != "empty_split" or not (work / REJECTED).is_file():
            raise
        raise _with_rejected(err, work / REJECTED, out_dir) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return IngestResult(out_dir, manifest, cache_hit=False)


def _prepare(cfg: DatasetConfig, source: Source, work: Path, fingerprint: str, key: str,
             count_tokens: Callable[[dict], int] | None, token_check: dict) -> dict:
    """Stream, validate, split and write every record into ``work``; return the manifest."""
    limits = ImageLimits(cfg.min_image_side, cfg.max_image_side, cfg.max_image_pixels)
    max_tokens = cfg.max_tokens if count_tokens is not None else None
    validator = RecordValidator(source.image_root, limits=limits, max_tokens=max_tokens,
                                count_tokens=count_tokens, dataset_root=source.root,
                                image_dir=cfg.image_dir)
    splitter = Splitter(cfg, source.root)
    read = unassigned = 0
    with (DropLog(work / REJECTED) as drops, SplitWriter(work) as writer,
          progress_bar(f"ingest {cfg.name}", total=None) as bar):
        for file, line, item in source.open():
            read += 1
            if read % PROGRESS_EVERY == 0:
                bar.update(completed=read, status=f"{drops.total} dropped")
            try:
                if isinstance(item, DataError):
                    raise item
                rec = validator.check(item, file=file, line=line)
                side = splitter.side(rec, file=file, line=line)
            except DataError as err:
                if cfg.on_invalid == "raise":
                    raise _with_drop_hint(err) from None
                drops.add(err, getattr(item, "record", None) if item is err else item)
                continue
            if side is None:
                unassigned += 1
            else:
                writer.write(side, rec)
        bar.update(completed=read, status=f"{drops.total} dropped")
    if not drops.total:
        (work / REJECTED).unlink(missing_ok=True)
    train, heldout = writer.counts["train"], writer.counts["heldout"]
    if drops.total:
        log.warning("ingest %s: dropped %d of %d records: %s (see %s)", cfg.name, drops.total,
                    read, drops.as_dict(), REJECTED)
    if drops.counts["path_escape"]:
        log.warning("ingest %s: %d records name images outside dataset.root (absolute, '..' or "
                    "a symlink leaving it); a Hugging Face hub cache links files into ../blobs: "
                    "use a real copy (huggingface-cli download --local-dir DIR)", cfg.name,
                    drops.counts["path_escape"])
    if unassigned:
        log.warning("ingest %s: %d records are in neither split of %s; left out", cfg.name,
                    unassigned, cfg.split_file)
    if not train or not heldout:
        empty = "train" if not train else "heldout"
        raise DataError(f"the {empty} split is empty ({train} train / {heldout} heldout of "
                        f"{read} records read, {drops.total} dropped)", reason="empty_split",
                        hint="change dataset.heldout_fraction or dataset.split_seed, check the "
                        "split column / file, or add more data")
    manifest = build_manifest(
        card={"name": cfg.name, "license": cfg.license, "usage": cfg.usage},
        source={"adapter": cfg.adapter, "source": str(source.path), "root": str(source.root),
                "image_root": str(source.image_root), "data_files": list(source.data_files),
                **({"task": cfg.task, "lang": cfg.lang, "template": cfg.template}
                   if cfg.adapter == "foodieqa" else {})},
        fingerprint=fingerprint, prepared_key=key,
        counts={"read": read, "kept": train + heldout, "train": train, "heldout": heldout,
                "dropped": drops.total, "unassigned": unassigned},
        drops=drops.as_dict(), split=splitter.describe(), token_check=token_check,
        rejected=REJECTED if drops.total else None)
    write_manifest(work / MANIFEST, manifest)
    return manifest


class Splitter:
    """Which side a record goes to: by group hash, a split column, or a split file."""

    def __init__(self, cfg: DatasetConfig, root: Path) -> None:
        self.cfg = cfg
        self.sides: dict[str, str] | None = None
        if cfg.split_file is not None:
            self.sides = _read_split_file(root / cfg.split_file)

    def describe(self) -> dict:
        cfg = self.cfg
        if cfg.split_file is not None:
            return {"method": "file", "split_file": cfg.split_file}
        if cfg.split_column is not None:
            return {"method": "column", "split_column": cfg.split_column}
        return {"method": "group_hash",
                "group_key": cfg.group_key or "meta.group, else the first image, else id",
                "heldout_fraction": cfg.heldout_fraction, "seed": cfg.split_seed}

    def side(self, rec: dict, *, file: str, line: int) -> str | None:
        """"train" or "heldout"; None for a record the split file does not list."""
        if self.sides is not None:
            return self.sides.get(rec["id"])
        if self.cfg.split_column is not None:
            value = lookup(rec, self.cfg.split_column)
            name = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
            if name is None:
                raise reject("bad_record", f"split column {self.cfg.split_column!r} is "
                             f"{value!r}; expected one of {sorted(SPLIT_NAMES)}",
                             file=file, line=line)
            return name
        return assign_split(self.group(rec, file=file, line=line),
                            heldout_fraction=self.cfg.heldout_fraction, seed=self.cfg.split_seed)

    def group(self, rec: dict, *, file: str, line: int) -> str:
        key = self.cfg.group_key
        if key is None:
            value = lookup(rec, "meta.group")
            if value is None:
                value = lookup(rec, "image") or rec["id"]
        else:
            value = lookup(rec, key)
            if value is None:
                raise reject("bad_record", f"group key {key!r} is missing", file=file, line=line)
        if isinstance(value, list):
            return "\x1f".join(map(str, value))
        return str(value)


def lookup(rec: dict, dotted: str) -> object:
    """A dotted field of the record, else of its ``meta``; ``image`` is the first image."""
    if dotted == "image":
        refs = image_refs(rec.get("image"))
        return refs[0] if refs else None
    for base in (rec, rec.get("meta")):
        value: object = base
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                value = None
                break
            value = value[part]
        if value is not None:
            return value
    return None


def _inside(root: Path, rel: str, key: str) -> Path:
    """``root / rel``; ConfigError naming ``key`` if it resolves (symlinks too) outside root."""
    path = root / rel if rel else root
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root)):
        raise ConfigError(f"{key}={rel!r} resolves outside dataset.root {root}; nothing outside "
                          "the dataset root is read")
    return path


def _read_split_file(path: Path) -> dict[str, str]:
    """``{"train": [ids], "heldout" | "test" | ...: [ids]}`` as id → side."""
    file = str(path)
    if not path.is_file():
        raise DataError("split file not found", reason="missing_file", file=file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"split file is not JSON ({err})", reason="bad_json", file=file) from None
    if not isinstance(data, dict):
        raise DataError('expected {"train": [ids], "heldout": [ids]}', reason="bad_json",
                        file=file)
    sides: dict[str, str] = {}
    for name, ids in data.items():
        side = SPLIT_NAMES.get(str(name).lower())
        if side is None or not isinstance(ids, list):
            raise DataError(f"split {name!r}: expected a list of ids under one of "
                            f"{sorted(SPLIT_NAMES)}", reason="bad_json", file=file)
        for rid in ids:
            rid = str(rid)
            if sides.setdefault(rid, side) != side:
                raise DataError(f"id {rid!r} is listed in both splits", reason="bad_record",
                                file=file)
    return sides


def _with_rejected(err: DataError, rejected: Path, out_dir: Path) -> DataError:
    """The empty-split error, after publishing the drops that caused it to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / REJECTED
    shutil.copyfile(rejected, target)
    new = DataError(f"{_bare(err)}; every dropped record and its reason: {target}",
                    reason=err.reason, file=err.file, line=err.line, hint=err.hint)
    new.detail = _bare(err)
    return new


def _bare(err: DataError) -> str:
    """A DataError's message without its location, reason and hint."""
    detail = getattr(err, "detail", None)
    if detail is not None:
        return detail
    text = str(err).split("\n  hint: ")[0]
    return text.split(f"[{err.reason}] ", 1)[-1]


def _with_drop_hint(err: DataError) -> DataError:
    hint = (f"{err.hint}; " if err.hint else "") + "or set dataset.on_invalid=drop to skip " \
        "such records (they are listed in data/rejected.jsonl)"
    new = DataError(_bare(err), reason=err.reason, file=err.file, line=err.line, hint=hint)
    new.detail = _bare(err)
    return new

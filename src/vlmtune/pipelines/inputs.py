"""What each stage reads, as a flat JSON-able map and its digest.

A stage is skipped only when the digest of its inputs equals the one recorded when it last
finished, so a changed benchmark re-evaluates without retraining and a stage whose upstream
files were rewritten runs again. The model enters by its identity (``config.json``, the weight
files' names, sizes and mtimes, the normalised absolute path), never by the path as typed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmtune.config import flatten, to_container

if TYPE_CHECKING:
    from vlmtune.pipelines.context import RunContext

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
CONTENT_HASH_MAX = 16 * 2**20  # files up to this size are hashed; larger: size + mtime
# Recipe sections each stage reads (dotted prefixes; the model also enters by identity).
SECTIONS = {
    "ingest": ("dataset",),
    "train": ("model", "method", "train"),
    "convert": ("model", "method.name"),
    "evaluate": ("model", "method.name", "benchmark", "benchmarks", "benchmark_paths",
                 "benchmark_limits"),
    "register": ("experiment_name", "registry"),
}
NOT_INPUTS = ("model.path", "model.build", "train.num_workers")


def normalised_path(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(path))))


def model_identity(path: str | Path, build: str | None = None) -> dict[str, Any]:
    """The model directory by what it holds: ``config.json`` content, the weight index and
    each weight file's name, size and mtime, and the normalised absolute path.

    vlmtune's own tiny model (built, or to be built by ``model.build``) is identified by its
    path alone: its weights follow from ``model.tiny`` and ``model.seed``, which the run key
    and the stage inputs already hold, so building it does not change the identity."""
    from vlmtune.models.loading import TINY_MARKER

    root = Path(normalised_path(path))
    identity: dict[str, Any] = {"path": str(root)}
    vacant = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    if (root / TINY_MARKER).is_file() or (vacant and build not in (None, "none")):
        identity["built_by"] = "vlmtune (model.tiny, model.seed)"
        return identity
    config = root / "config.json"
    if not config.is_file():
        identity["config"] = None
        return identity
    identity["config"] = json.loads(config.read_text(encoding="utf-8"))
    weights = {}
    for file in sorted(root.iterdir()):
        if file.is_file() and (file.suffix in WEIGHT_SUFFIXES or file.name in WEIGHT_INDEXES):
            stat = file.stat()
            weights[file.name] = [stat.st_size, stat.st_mtime_ns]
    identity["weights"] = weights
    index = next((root / n for n in WEIGHT_INDEXES if (root / n).is_file()), None)
    if index is not None:
        identity["weight_map"] = file_digest(index)
    return identity


def file_digest(path: Path, *, content: bool = False) -> str:
    """Content hash of a small file (or any, with ``content``: data files, which a re-ingest
    rewrites unchanged), ``size:mtime`` of a large one, ``missing`` if absent."""
    if not path.is_file():
        return "missing"
    stat = path.stat()
    if stat.st_size > CONTENT_HASH_MAX and not content:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(2**20):
            h.update(chunk)
    return h.hexdigest()


def dir_digest(path: Path) -> str:
    """One digest over every file under ``path`` (relative name + :func:`file_digest`)."""
    if not path.is_dir():
        return "missing"
    h = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{file.relative_to(path)}={file_digest(file)}\n".encode())
    return h.hexdigest()


def stage_inputs(ctx: RunContext, stage: str) -> dict[str, Any]:
    """The flat map of everything ``stage`` reads in this run directory right now."""
    flat = flatten(to_container(ctx.recipe))
    inputs: dict[str, Any] = {
        k: v for k, v in flat.items()
        if any(k == s or k.startswith(f"{s}.") for s in SECTIONS[stage])
        and not any(k == x or k.startswith(f"{x}.") for x in NOT_INPUTS)}
    data = ctx.run_dir / "data"
    if stage == "ingest":
        inputs["data.fingerprint"] = ctx.data_fingerprint
        if ctx.recipe.dataset.max_tokens is not None:  # records are measured with the model
            inputs |= _model_inputs(ctx, flat)
        return inputs
    inputs |= _prefixed("model.identity", ctx.model_identity)
    if stage == "train":
        inputs["files.data/train.jsonl"] = file_digest(data / "train.jsonl", content=True)
    elif stage == "convert":
        trained = "trained" if ctx.recipe.method.name == "full" else "adapter"
        inputs[f"files.{trained}/"] = dir_digest(ctx.run_dir / trained)
    elif stage == "evaluate":
        split = ctx.recipe.benchmark.split
        inputs[f"files.data/{split}.jsonl"] = file_digest(data / f"{split}.jsonl", content=True)
        tuned = "train" in ctx.recipe.pipeline.stages
        inputs["pipeline.evaluates_tuned"] = tuned
        if tuned:
            for name in ("merged", "adapter", "trained"):
                inputs[f"files.{name}/"] = dir_digest(ctx.run_dir / name)
    elif stage == "register":
        inputs["files.eval/"] = dir_digest(ctx.run_dir / "eval")
    return inputs


def _model_inputs(ctx: RunContext, flat: dict[str, Any]) -> dict[str, Any]:
    model = {k: v for k, v in flat.items() if k.startswith("model.") and k not in NOT_INPUTS}
    return model | _prefixed("model.identity", ctx.model_identity)


def _prefixed(prefix: str, tree: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": json.dumps(v, sort_keys=True, default=str) if isinstance(v, dict)
            else v for k, v in tree.items()}


def digest(inputs: dict[str, Any]) -> str:
    payload = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()


def changed_keys(before: dict[str, Any] | None, after: dict[str, Any]) -> list[str]:
    """The keys whose value differs (added, removed or changed), sorted."""
    before = before or {}
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))

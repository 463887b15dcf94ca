"""Say what a model directory (or checkpoint file) is, from its files and headers alone."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from vlmtune.convert.official_config import is_official
from vlmtune.convert.shards import INDEX, SINGLE, weight_files
from vlmtune.convert.xtuner import DEEPSPEED_FILE
from vlmtune.errors import CheckpointError

CONVERTERS = {
    "official": "vlmtune checkpoint to-hf {path} OUT",
    "xtuner pth": "vlmtune checkpoint to-hf {path} OUT --base OFFICIAL_BASE",
    "peft adapter": "vlmtune checkpoint merge BASE {path} OUT",
}


@dataclass
class Description:
    path: str
    layout: str  # official | hf-native | peft adapter | xtuner pth | unknown
    family: str | None = None
    llm: str | None = None
    dtype: str | None = None
    size_bytes: int = 0
    shards: int = 0
    tokenizer: str | None = None
    convert_with: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def describe(path: Path) -> Description:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_file() and path.suffix not in (".pth", ".pt"):
        return Description(str(path), "unknown")
    if path.is_file() or (path / DEEPSPEED_FILE).exists() or any(path.glob(f"*/{DEEPSPEED_FILE}")):
        files = [path] if path.is_file() else sorted(path.rglob(DEEPSPEED_FILE))
        return _finish(Description(str(path), "xtuner pth", family="internvl",
                                   size_bytes=sum(f.stat().st_size for f in files),
                                   shards=len(files)))
    if (path / "adapter_config.json").exists():
        config = json.loads((path / "adapter_config.json").read_text())
        weights = list(path.glob("adapter_model.*"))
        return _finish(Description(
            str(path), "peft adapter", family=config.get("peft_type"),
            llm=str(config.get("base_model_name_or_path") or "") or None,
            size_bytes=sum(f.stat().st_size for f in weights), shards=len(weights)))
    if not (path / "config.json").exists():
        return Description(str(path), "unknown")
    config = json.loads((path / "config.json").read_text())
    if is_official(config):
        llm = (config.get("llm_config") or {}).get("architectures", ["?"])[0]
        desc = Description(str(path), "official", family="internvl (InternVLChatModel)", llm=llm,
                           dtype=config.get("torch_dtype"))
    else:
        text = config.get("text_config") or {}
        desc = Description(str(path), "hf-native", family=config.get("model_type"),
                           llm=text.get("model_type"),
                           dtype=config.get("dtype") or config.get("torch_dtype"))
    try:
        files = weight_files(path)
    except CheckpointError:
        files = []
    desc.size_bytes = sum(f.stat().st_size for f in files)
    desc.shards = len(files)
    desc.tokenizer = tokenizer_kind(path)
    return _finish(desc)


def tokenizer_kind(path: Path) -> str | None:
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    if (path / "tokenizer.json").exists():
        return f"fast ({config.get('tokenizer_class', 'PreTrainedTokenizerFast')})"
    if (path / "tokenizer.model").exists():
        remote = " with remote code" if "auto_map" in config else ""
        return f"sentencepiece ({config.get('tokenizer_class', '?')}{remote})"
    if (path / "vocab.json").exists():
        return f"bpe vocab/merges ({config.get('tokenizer_class', '?')})"
    return None


def _finish(desc: Description) -> Description:
    hint = CONVERTERS.get(desc.layout)
    desc.convert_with = hint.format(path=desc.path) if hint else None
    return desc


def render(desc: Description) -> str:
    size = f"{desc.size_bytes / 1e6:.1f} MB" if desc.size_bytes else "-"
    rows = [("path", desc.path), ("layout", desc.layout), ("family", desc.family),
            ("llm", desc.llm), ("dtype", desc.dtype), ("size", size),
            ("shards", str(desc.shards)), ("tokenizer", desc.tokenizer),
            ("convert with", desc.convert_with)]
    return "\n".join(f"{key:<13}{value}" for key, value in rows if value)


__all__ = ["Description", "describe", "render", "tokenizer_kind", "INDEX", "SINGLE"]

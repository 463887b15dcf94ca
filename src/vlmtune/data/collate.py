"""Training samples from a conversation JSONL, and the collator that batches them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from vlmtune.data.images import open_image
from vlmtune.data.templates import (
    IGNORE_INDEX,
    IMAGE_PLACEHOLDER,
    ChatTemplate,
    encode_conversation,
    validate_conversation,
)
from vlmtune.data.vision import EncodedImages, ImagePipeline, concat_collate
from vlmtune.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class _Record:
    line: int
    id: str
    images: list[Path]
    conversations: list[dict]


@dataclass
class EncodedSample:
    """One record as training sees it; ``full_length``: its tokens before truncation."""

    id: str
    input_ids: list[int]
    labels: list[int]
    images: EncodedImages
    full_length: int

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)


class ConversationDataset(Dataset):
    """Conversation records (LLaVA style JSONL) as tokenized, label-masked image samples.

    Records and image paths are checked when the dataset is built; tokenization and image
    decoding happen per item, through the model family's image pipeline. A sample longer than
    ``max_length`` is cut from the end, never through an image's token block (DataError
    ``too_long`` if the images alone do not fit).
    """

    def __init__(
        self,
        jsonl_path: Path,
        image_root: Path,
        tokenizer: Any,
        images: ImagePipeline,
        *,
        template: ChatTemplate,
        system: str | None = None,
        max_length: int,
    ) -> None:
        self.path = Path(jsonl_path)
        self.image_root = Path(image_root).resolve()
        self.tokenizer = tokenizer
        self.images = images
        self.template = template
        self.system = system
        self.max_length = max_length
        self.image_token_id = _token_id(tokenizer, images.image_token)
        self.block_ids = {_token_id(tokenizer, t) for t in images.block_tokens}
        self.num_truncated = 0  # counted in this process only
        self.records = self._read()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.encode(index)
        return {
            "input_ids": torch.tensor(sample.input_ids, dtype=torch.long),
            "labels": torch.tensor(sample.labels, dtype=torch.long),
            "images": sample.images.tensors or None,
        }

    def encode(self, index: int) -> EncodedSample:
        """Record ``index`` exactly as training feeds it, with what went into it."""
        rec = self.records[index]
        encoded = self.images.encode([open_image(path) for path in rec.images])
        with self._located(rec):
            input_ids, labels = encode_conversation(
                self.tokenizer, rec.conversations, template=self.template,
                image_blocks=encoded.blocks, system=self.system,
            )
            full_length = len(input_ids)
            input_ids, labels = self._fit(rec, input_ids, labels, encoded.num_image_tokens)
        return EncodedSample(rec.id, input_ids, labels, encoded, full_length)

    def lengths(self) -> list[int]:
        """Approximate token length of each record (text only), for length grouping."""
        return [sum(len(str(t.get("value", ""))) for t in r.conversations) for r in self.records]

    def modality_lengths(self) -> list[tuple[bool, int]]:
        """``(has_image, approximate tokens)`` per record, for grouping batches.

        The text (less its ``<image>`` placeholders) is tokenized in one batched call, without
        the template; each image adds the tokens of its block when the image pipeline can tell
        them from the image's size (read from the file header, not decoded).
        """
        texts = ["\n".join(str(t.get("value", "")).replace(IMAGE_PLACEHOLDER, "")
                           for t in r.conversations) for r in self.records]
        counts = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return [(bool(r.images), n + sum(self._image_tokens(p) for p in r.images))
                for r, n in zip(self.records, counts, strict=True)]

    def _image_tokens(self, path: Path) -> int:
        processor = getattr(self.images, "processor", None)
        per_tile = getattr(self.images, "tokens_per_tile", None)
        if per_tile is None or not hasattr(processor, "get_number_of_image_patches"):
            return 0
        with Image.open(path) as image:
            width, height = image.size
        tiles = int(processor.get_number_of_image_patches(height, width))
        return tiles * per_tile + len(self.block_ids) - 1  # + the block's start/end markers

    def _fit(
        self, rec: _Record, input_ids: list[int], labels: list[int], expected: int
    ) -> tuple[list[int], list[int]]:
        found = input_ids.count(self.image_token_id)
        if found != expected:
            raise DataError(
                f"record {rec.id!r}: expected {expected} {self.images.image_token} tokens, got "
                f"{found}", reason="image_token_mismatch",
                hint="does the text contain image special tokens?",
            )
        if len(input_ids) <= self.max_length:
            return input_ids, labels
        image_end = max((i + 1 for i, t in enumerate(input_ids) if t in self.block_ids),
                        default=0)
        if image_end > self.max_length:
            raise DataError(
                f"record {rec.id!r}: its image tokens end at {image_end} > max_length "
                f"{self.max_length}", reason="too_long",
                hint="raise max_length or lower the maximum number of tiles",
            )
        if all(t == IGNORE_INDEX for t in labels[: self.max_length]):
            raise DataError(
                f"record {rec.id!r}: no reply token left within max_length {self.max_length}",
                reason="too_long", hint="raise max_length or shorten the prompt",
            )
        self.num_truncated += 1
        log.debug("truncated record %r from %d to %d tokens", rec.id, len(input_ids),
                  self.max_length)
        return input_ids[: self.max_length], labels[: self.max_length]

    def _read(self) -> list[_Record]:
        records = []
        with self.path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"invalid JSON: {err.msg}", reason="bad_json",
                                    file=str(self.path), line=line_no) from None
                records.append(self._parse(raw, line_no))
        return records

    def _parse(self, raw: Any, line_no: int) -> _Record:
        where = {"file": str(self.path), "line": line_no}
        if not isinstance(raw, dict) or "conversations" not in raw:
            raise DataError("a record must be an object with 'conversations'",
                            reason="bad_record", **where)
        image = raw.get("image")
        names = [] if image is None else [image] if isinstance(image, str) else image
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError("'image' must be a path or a list of paths", reason="bad_record",
                            **where)
        rec = _Record(line_no, str(raw.get("id", line_no)),
                      [self._resolve(n, line_no) for n in names], raw["conversations"])
        with self._located(rec):
            validate_conversation(rec.conversations, len(rec.images))
        return rec

    def _resolve(self, name: str, line_no: int) -> Path:
        path = (self.image_root / name).resolve()
        if not path.is_relative_to(self.image_root):
            raise DataError(f"image path {name!r} is outside the image root {self.image_root}",
                            reason="bad_image_path", file=str(self.path), line=line_no)
        if not path.is_file():
            raise DataError(f"image {name!r} not found under {self.image_root}",
                            reason="missing_image", file=str(self.path), line=line_no)
        return path

    def _located(self, rec: _Record) -> AbstractContextManager[None]:
        return _located(str(self.path), rec.line)


def _token_id(tokenizer: Any, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ConfigError(f"the tokenizer has no {token} token; it cannot encode images")
    return token_id


@contextmanager
def _located(file: str, line: int) -> Iterator[None]:
    """Re-raise a DataError that has no file with this record's file and line."""
    try:
        yield
    except DataError as err:
        if err.file is not None:
            raise
        message = str(err).split("\n  hint: ")[0].removeprefix(f"[{err.reason}] ")
        raise DataError(message, reason=err.reason, file=file, line=line, hint=err.hint) from err


class Collator:
    """Right-pads a list of samples into a batch; image tensors joined by the family's rule."""

    def __init__(self, pad_token_id: int,
                 collate_images: Callable[[list[dict]], dict] = concat_collate) -> None:
        self.pad_token_id = pad_token_id
        self.collate_images = collate_images

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(s["input_ids"]) for s in samples)
        input_ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n] = sample["input_ids"]
            labels[row, :n] = sample["labels"]
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        parts = [s["images"] for s in samples if s.get("images")]
        if parts:
            batch.update(self.collate_images(parts))
        return batch

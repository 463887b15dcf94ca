"""What the model sees: records rendered exactly as training encodes them.

Each previewed record is the ``ConversationDataset`` sample itself (tokens, labels, image
tiles, truncation), shown as text with each image's token block collapsed and the supervised
spans highlighted, or written as one JSON object per record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from vlmtune.data.collate import ConversationDataset, EncodedSample
from vlmtune.data.templates import IGNORE_INDEX, starts_with_bos

SUPERVISED_STYLE = "bold green"


@dataclass
class PreviewSample:
    split: str  # train | heldout
    template: str
    sample: EncodedSample
    bos: bool  # the sequence starts with the tokenizer's BOS

    @property
    def tiles(self) -> list[int]:
        """Tiles per image (a pipeline without tiles: one per image)."""
        tiles = self.sample.images.extra.get("tiles")
        return list(tiles) if tiles is not None else [1] * len(self.sample.images.blocks)

    def to_json(self) -> dict[str, Any]:
        s = self.sample
        return {"split": self.split, "id": s.id, "input_ids": s.input_ids, "labels": s.labels,
                "tiles": self.tiles, "image_tokens": s.images.num_image_tokens,
                "bos": self.bos, "template": self.template}


def preview_split(dataset: ConversationDataset, split: str, n: int) -> list[PreviewSample]:
    """The first ``n`` records of ``dataset`` as training sees them."""
    out = []
    for index in range(min(n, len(dataset))):
        sample = dataset.encode(index)
        out.append(PreviewSample(split, dataset.template.name, sample,
                                 starts_with_bos(dataset.tokenizer, sample.input_ids)))
    return out


def render(preview: PreviewSample, tokenizer: Any, image_token: str) -> str:
    """Rich markup: a header line with the counts, then the text (supervised spans styled,
    each run of ``image_token`` collapsed to ``image_token×N``)."""
    s = preview.sample
    supervised = sum(label != IGNORE_INDEX for label in s.labels)
    truncated = (f"yes ({s.full_length} → {len(s.input_ids)})" if s.truncated else "no")
    header = (f"[bold]{preview.split}[/bold] id={escape(s.id)} template={preview.template} · "
              f"tokens {len(s.input_ids)} (image {s.images.num_image_tokens}, supervised "
              f"{supervised}) · tiles {preview.tiles} · BOS {'yes' if preview.bos else 'no'} · "
              f"truncated {truncated}")
    body = []
    for ids, is_supervised in _runs(s.input_ids, s.labels):
        text = collapse_image_tokens(tokenizer.decode(ids, skip_special_tokens=False),
                                     image_token)
        body.append(f"[{SUPERVISED_STYLE}]{escape(text)}[/{SUPERVISED_STYLE}]"
                    if is_supervised else escape(text))
    return header + "\n" + "".join(body)


def collapse_image_tokens(text: str, image_token: str) -> str:
    """``<IMG_CONTEXT><IMG_CONTEXT>…`` → ``<IMG_CONTEXT>×N``."""
    token = re.escape(image_token)
    return re.sub(f"(?:{token})+",
                  lambda m: f"{image_token}×{len(m.group(0)) // len(image_token)}", text)


def _runs(ids: list[int], labels: list[int]) -> list[tuple[list[int], bool]]:
    runs: list[tuple[list[int], bool]] = []
    for tok, label in zip(ids, labels, strict=True):
        flag = label != IGNORE_INDEX
        if runs and runs[-1][1] == flag:
            runs[-1][0].append(tok)
        else:
            runs.append(([tok], flag))
    return runs

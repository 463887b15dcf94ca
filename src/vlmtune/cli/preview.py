"""``vlmtune preview [overrides]``: the first ``preview.n`` training and held-out records,
exactly as training encodes them (prompt text with image blocks collapsed, supervised spans
highlighted, tiles, image tokens, total tokens, truncation); ``preview.json=FILE`` also writes
them as JSON Lines (split, id, input_ids, labels, tiles, image_tokens, bos, template)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vlmtune.config import RecipeConfig

log = logging.getLogger(__name__)
SPLITS = ("train", "heldout")


def preview(recipe: RecipeConfig) -> dict[str, Any]:
    """Render (and optionally write) the preview; returns ``{"samples": N, "json": path}``."""
    from rich.console import Console

    from vlmtune.data.collate import ConversationDataset
    from vlmtune.data.preview import preview_split, render
    from vlmtune.data.templates import get_template
    from vlmtune.models.families.processing import load_processing
    from vlmtune.models.loading import ensure_model_dir

    model_dir = ensure_model_dir(recipe.model, recipe.cache_dir)
    data_dir, image_root = prepared_data(recipe)
    tokenizer, images = load_processing(model_dir, recipe.model)
    template = get_template(recipe.model.chat_template)
    console = Console(highlight=False, soft_wrap=True)
    samples = []
    for split in SPLITS:
        path = data_dir / f"{split}.jsonl"
        if not path.is_file() or not path.read_text(encoding="utf-8").strip():
            console.print(f"[bold]{split}[/bold]: no records")
            continue
        dataset = ConversationDataset(path, image_root, tokenizer, images, template=template,
                                      system=recipe.model.system_prompt,
                                      max_length=recipe.train.max_length)
        for sample in preview_split(dataset, split, recipe.preview.n):
            console.rule()
            console.print(render(sample, tokenizer, images.image_token))
            samples.append(sample)
    out = recipe.preview.json
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with Path(out).open("w", encoding="utf-8") as fh:
            for sample in samples:
                fh.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
        console.print(f"wrote {len(samples)} sample(s) to {out}")
    return {"samples": len(samples), "json": out}


def prepared_data(recipe: RecipeConfig) -> tuple[Path, Path]:
    """``(data_dir, image_root)``: the dataset ingested as the pipeline's ingest stage does it
    (same options, same token check, same prepared cache) into ``<cache_dir>/preview``."""
    from vlmtune.data.ingest import ingest_dataset
    from vlmtune.pipelines.context import prepare_source
    from vlmtune.pipelines.ingest import token_counter

    _, fingerprint = prepare_source(recipe.dataset)
    count_tokens, token_check = token_counter(recipe)
    out_dir = Path(recipe.cache_dir) / "preview" / recipe.dataset.name
    result = ingest_dataset(recipe.dataset, out_dir, fingerprint=fingerprint,
                            cache_dir=Path(recipe.cache_dir) / "prepared",
                            count_tokens=count_tokens, token_check=token_check)
    return result.out_dir, Path(result.manifest["image_root"])

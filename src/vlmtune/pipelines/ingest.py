"""Stage 1: the dataset card → validated conversation JSONL (train / held-out) + manifest.

Writes ``data/{train,heldout}.jsonl``, ``data/manifest.json`` and, when records were dropped,
``data/rejected.jsonl``; logs the counts, the manifest and both splits as MLflow dataset inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vlmtune.config import RecipeConfig
from vlmtune.data.fingerprint import fingerprint_files
from vlmtune.data.ingest import dataset_root, ingest_dataset
from vlmtune.data.manifest import image_refs
from vlmtune.pipelines.context import RunContext

log = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json",
               "preprocessor_config.json", "special_tokens_map.json")


def run(ctx: RunContext) -> None:
    recipe, cfg = ctx.recipe, ctx.recipe.dataset
    count_tokens, token_check = token_counter(recipe)
    result = ingest_dataset(cfg, ctx.data_dir, fingerprint=ctx.data_fingerprint,
                            cache_dir=Path(recipe.cache_dir) / "prepared",
                            count_tokens=count_tokens, token_check=token_check)
    manifest = result.manifest
    counts, drops = manifest["counts"], manifest["drops"]
    log.info("ingest: kept %d of %d records (train %d, held-out %d); dropped %s%s",
             counts["kept"], counts["read"], counts["train"], counts["heldout"],
             dict(drops) or "none", " (cache hit)" if result.cache_hit else "")
    ctx.tracker.log_metrics({f"data/{k}": v for k, v in counts.items()}
                            | {f"data/dropped/{k}": v for k, v in drops.items()})
    ctx.tracker.log_artifact(result.manifest_path, "data")
    if result.rejected_path is not None:
        ctx.tracker.log_artifact(result.rejected_path, "data")
    for split in ("train", "heldout"):
        ctx.tracker.log_dataset(
            f"{cfg.name}-{split}", digest=manifest["fingerprint"], source=manifest["source"],
            context=split, profile={"records": counts[split], "adapter": cfg.adapter,
                                    "license": cfg.license, "usage": cfg.usage,
                                    "dropped": counts["dropped"]})


def token_counter(recipe: RecipeConfig) -> tuple[Any, dict]:
    """(count_tokens, description) for ``dataset.max_tokens``; (None, why not) when unset or
    when ``model.path`` holds no model (preflight builds vlmtune's cached tiny model first;
    another absent path is left alone: only ingest needs no model)."""
    from vlmtune.convert.cache import native_model_dir

    cfg, model_dir = recipe.dataset, Path(recipe.model.path)
    if cfg.max_tokens is None:
        return None, {"max_tokens": None, "status": "not requested"}
    if not (model_dir / "config.json").is_file():
        note = f"skipped: no model in model.path={str(model_dir)!r} yet"
        log.warning("ingest: dataset.max_tokens=%d is not checked (%s); training still refuses "
                    "records whose image tokens do not fit train.max_length", cfg.max_tokens,
                    note)
        return None, {"max_tokens": cfg.max_tokens, "status": note}
    model_dir = native_model_dir(model_dir, recipe.cache_dir)  # official layout → its HF copy
    try:
        counter = TokenCounter(model_dir, recipe, dataset_root(cfg) / cfg.image_dir)
    except (AttributeError, TypeError) as err:  # a pipeline that needs more than the config
        note = f"skipped: cannot measure {recipe.model.family} images from the config ({err})"
        log.warning("ingest: dataset.max_tokens=%d is not checked (%s)", cfg.max_tokens, note)
        return None, {"max_tokens": cfg.max_tokens, "status": note}
    files = [f for f in MODEL_FILES if (model_dir / f).is_file()]
    return counter, {"max_tokens": cfg.max_tokens, "status": "checked",
                     "model": str(model_dir.resolve()),
                     "model_files": fingerprint_files(model_dir, files),
                     "chat_template": recipe.model.chat_template,
                     "system_prompt": recipe.model.system_prompt,
                     "tiles": [recipe.model.min_tiles, recipe.model.max_tiles]}


class TokenCounter:
    """Tokens of a record as training feeds it: the model's tokenizer over the chat template,
    with each ``<image>`` expanded to the family's image token block (never cut)."""

    def __init__(self, model_dir: Path, recipe: RecipeConfig, image_root: Path) -> None:
        from types import SimpleNamespace

        from transformers import AutoConfig, AutoTokenizer

        from vlmtune.data.templates import get_template
        from vlmtune.models.families import get_family

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        family = get_family(recipe.model.family)
        # The image pipelines read only the model's config: no weights are loaded.
        shell = SimpleNamespace(config=AutoConfig.from_pretrained(model_dir))
        self.images = family.image_pipeline(shell, model_dir, recipe.model)
        self.template = get_template(recipe.model.chat_template)
        self.system = recipe.model.system_prompt
        self.image_root = Path(image_root)
        self._blocks: dict[str, str] = {}

    def __call__(self, record: dict) -> int:
        from vlmtune.data.templates import encode_conversation

        blocks = [self._block(ref) for ref in image_refs(record.get("image"))]
        ids, _ = encode_conversation(self.tokenizer, record["conversations"],
                                     template=self.template, image_blocks=blocks,
                                     system=self.system)
        return len(ids)

    def _block(self, ref: str) -> str:
        """The image's token block (memoised per path for a few thousand images)."""
        if ref not in self._blocks:
            from PIL import Image

            from vlmtune.data.images import image_token_block
            from vlmtune.data.vision import InternVLTiles

            path = self.image_root / ref
            if isinstance(self.images, InternVLTiles):  # tile count from the header alone
                with Image.open(path) as im:
                    width, height = im.size
                tiles = self.images.processor.get_number_of_image_patches(height, width)
                block = image_token_block(tiles, self.images.tokens_per_tile)
            else:
                from vlmtune.data.images import open_image

                block = self.images.encode([open_image(path)]).blocks[0]
            if len(self._blocks) >= 4096:
                self._blocks.clear()
            self._blocks[ref] = block
        return self._blocks[ref]

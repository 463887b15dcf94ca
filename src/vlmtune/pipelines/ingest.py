"""Stage 1: the dataset → validated conversation JSONL (train / held-out) + manifest."""

from __future__ import annotations

import logging
from pathlib import Path

from vlmtune.data.ingest import ingest_foodieqa
from vlmtune.pipelines.context import RunContext

log = logging.getLogger(__name__)


def run(ctx: RunContext) -> None:
    cfg = ctx.recipe.dataset
    result = ingest_foodieqa(
        Path(cfg.root), ctx.data_dir, task=cfg.task, lang=cfg.lang, template=cfg.template,
        on_invalid=cfg.on_invalid, heldout_fraction=cfg.heldout_fraction,
        split_seed=cfg.split_seed, source_fingerprint=ctx.data_fingerprint,
        card={"name": cfg.name, "license": cfg.license, "usage": cfg.usage})
    counts, drops = result.manifest["counts"], result.manifest["drops"]
    log.info("ingest: kept %d of %d records (train %d, held-out %d); dropped %s",
             counts["kept"], counts["read"], counts["train"], counts["heldout"],
             dict(drops) or "none")
    ctx.tracker.log_metrics({f"data/{k}": v for k, v in counts.items()})
    ctx.tracker.log_artifact(result.manifest_path, "data")
    for split in ("train", "heldout"):
        ctx.tracker.log_dataset(f"{cfg.name}-{split}", digest=ctx.data_fingerprint,
                                source=str(Path(cfg.root).resolve()), context=split,
                                profile={"records": counts[split], "adapter": cfg.adapter,
                                         "license": cfg.license})

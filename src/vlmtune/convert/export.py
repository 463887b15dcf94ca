"""The convert stage's ``export/official/``: a tuned model back in its base's official layout."""

from __future__ import annotations

import logging
from pathlib import Path

from vlmtune.convert.cache import is_official_dir

log = logging.getLogger(__name__)


def export_official(merged: Path, run_dir: Path, base: Path) -> Path | None:
    """``run_dir/export/official/`` from ``merged/`` when ``base`` (the recipe's
    ``model.path``) is an official InternVL checkpoint; None (nothing written) otherwise."""
    base = Path(base)
    if not is_official_dir(base) or not (Path(merged) / "config.json").exists():
        return None
    from vlmtune.convert.official import to_official_dir

    out = Path(run_dir) / "export" / "official"
    out.parent.mkdir(parents=True, exist_ok=True)
    to_official_dir(merged, out, like=base, force=True)
    log.info("convert: wrote %s, the tuned model in the official layout of %s (its remote "
             "code, tokenizer and generation config beside it; LMDeploy serves it)", out, base)
    return out

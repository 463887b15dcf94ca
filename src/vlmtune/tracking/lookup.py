"""Read-only look-ups in a tracking store: which run directory an MLflow run logged."""

from __future__ import annotations

import logging
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vlmtune.errors import ConfigError

for _noisy in ("mlflow", "alembic"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

RUN_DIR_TAG = "vlmtune.run_dir"


def run_dir_of(uri: str, run_id: str) -> Path:
    """The ``vlmtune.run_dir`` tag of MLflow run ``run_id``; ConfigError if the store, the run
    or the tag is not there (a local sqlite file is never created by asking)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"{run_id!r} is not a run directory, and there is no MLflow store "
                          f"at {uri} to look it up in (set --tracking-uri)")
    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{run_id!r} is neither a run directory nor an MLflow run in "
                          f"{uri}") from None
    tag = run.data.tags.get(RUN_DIR_TAG)
    if not tag:
        raise ConfigError(f"MLflow run {run_id} in {uri} has no {RUN_DIR_TAG} tag (not a "
                          "vlmtune run)")
    return Path(tag)

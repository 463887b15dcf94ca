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


def run_dir_of_model(uri: str, model_uri: str) -> Path:
    """The run directory behind ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``): the
    registered version's MLflow run and its ``vlmtune.run_dir`` tag; read-only."""
    ref = model_uri.removeprefix("models:/")
    name, alias = ref.split("@", 1) if "@" in ref else (ref.rpartition("/")[0], None)
    if not name:
        raise ConfigError(f"{model_uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"no MLflow store at {uri} to look up {model_uri} in "
                          "(set --tracking-uri)")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        version = (client.get_model_version_by_alias(name, alias) if alias is not None
                   else client.get_model_version(name, ref.rpartition("/")[2]))
    except MlflowException:
        raise ConfigError(f"{model_uri} is not registered in {uri}") from None
    if not version.run_id:
        raise ConfigError(f"{model_uri} in {uri} has no MLflow run (not logged by vlmtune)")
    return run_dir_of(uri, version.run_id)


def experiment_id_of(uri: str, run_id: str) -> str | None:
    """The experiment id of MLflow run ``run_id`` (None when it cannot be read)."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    try:
        return MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except MlflowException:
        return None

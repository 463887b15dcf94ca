"""Tag an existing MLflow run by id (e.g. ``vlmtune retrain`` marking its job's run)."""

from __future__ import annotations

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient


def set_run_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Set ``tags`` on run ``run_id`` in the store at ``uri`` (overwriting same-named tags)."""
    MlflowClient(tracking_uri=uri).log_batch(
        run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

"""The MLflow model registry: register a run's model as a pyfunc version, move aliases, tag.

Aliases, not stages (deprecated in MLflow 3): ``champion`` (served), ``challenger`` (the newest
version), ``previous`` (the champion before the last promotion, for rollback).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vlmtune.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"  # the pyfunc model's folder among the run's artifacts
MODEL_CONFIG = "vlmtune_model.json"  # model section of the recipe, read back by the pyfunc


@dataclass
class Version:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]


class Registry:
    """Registered models of one tracking store (``uri``)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def register(self, name: str, run_id: str, artifacts: dict[str, Path],
                 model_config: dict[str, Any]) -> Version:
        """Log ``artifacts`` (``model_dir``, optional ``adapter_dir``) as a pyfunc model in run
        ``run_id`` and register it as a new version of ``name`` (created when absent)."""
        import mlflow.pyfunc

        from vlmtune.tracking.pyfunc import VlmtunePyfunc

        with tempfile.TemporaryDirectory(prefix="vlmtune-pyfunc-") as tmp:
            config = Path(tmp) / MODEL_CONFIG
            config.write_text(json.dumps(model_config, default=str), encoding="utf-8")
            saved = Path(tmp) / MODEL_ARTIFACT
            mlflow.pyfunc.save_model(
                str(saved), python_model=VlmtunePyfunc(),
                artifacts={**{k: str(v) for k, v in artifacts.items()},
                           "vlmtune_model": str(config)},
                pip_requirements=["vlmtune"])  # served with --env-manager local: no inference
            self.client.log_artifacts(run_id, str(saved), MODEL_ARTIFACT)
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, description="vlmtune fine-tuned model (pyfunc: rows {image, question})")
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
        made = self.client.create_model_version(name, source, run_id=run_id)
        log.info("registered %s version %s from run %s", name, made.version, run_id)
        return Version(name, str(made.version), run_id, {})

    def version_of_run(self, name: str, run_id: str) -> Version | None:
        """The version of ``name`` registered from run ``run_id`` (None: none yet)."""
        try:
            found = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        except MlflowException:
            return None
        if not found:
            return None
        newest = max(found, key=lambda v: int(v.version))
        return Version(name, str(newest.version), newest.run_id, dict(newest.tags))

    def get(self, name: str, version: str) -> Version:
        try:
            found = self.client.get_model_version(name, str(version))
        except MlflowException:
            raise ConfigError(f"registered model {name!r} has no version {version} in "
                              f"{self.uri}") from None
        return Version(name, str(found.version), found.run_id, dict(found.tags))

    def by_alias(self, name: str, alias: str) -> Version | None:
        try:
            found = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None
        return Version(name, str(found.version), found.run_id, dict(found.tags))

    def aliases(self, name: str) -> dict[str, str]:
        """``{alias: version}`` of registered model ``name`` ({} when it does not exist)."""
        try:
            return {k: str(v) for k, v in
                    self.client.get_registered_model(name).aliases.items()}
        except MlflowException:
            return {}

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        with contextlib.suppress(MlflowException):
            self.client.delete_registered_model_alias(name, alias)

    def set_tags(self, name: str, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

"""MLflow seam against a real sqlite store: what the tracker logs is what MLflow reads back."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vlmtune.config import flatten
from vlmtune.tracking import MlflowTracker, NullTracker, open_tracker
from vlmtune.tracking.tracker import run_status


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory):
    """An empty, migrated MLflow database; creating one costs ~1.5 s, copying it ~nothing."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(_empty_mlflow_db, tmp_path):
    """A fresh sqlite MLflow store of this test's own, under tmp_path."""
    shutil.copy(_empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_run_lifecycle_reads_back_from_the_store(mlflow_uri, tmp_path):
    tracker = MlflowTracker(mlflow_uri, "demo")
    run_id = tracker.start("run-abc123", tags={"vlmtune.run_key": "abc123"})
    assert tracker.run_id == run_id

    nested = {"train": {"lr": 3e-5, "batch_size": 4}, "method": {"lora": {"r": 128}},
              "model": {"path": "p" * 7000}, "hub": {"hf_token": "s3cret", "api_key": "k"},
              "many": {f"p{i:03d}": i for i in range(120)}}
    params = flatten(nested)
    assert len(params) == 126
    tracker.log_params(params)
    for step, loss in [(1, 2.5), (2, 2.0), (5, 1.25)]:
        tracker.log_metrics({"train/loss": loss, "train/lr": step * 1e-3}, step=step)
    tracker.log_metrics({"eval/foodie/accuracy": 0.75})
    tracker.set_tags({"vlmtune.stage": "train", "vlmtune.git_sha": "deadbeef"})
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    tracker.log_artifact(report)
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "loss.png").write_bytes(b"\x89PNG")
    tracker.log_artifact(plots, "plots")
    tracker.end("FAILED")

    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.info.end_time is not None
    assert run.info.run_name == "run-abc123"
    assert client.get_experiment(run.info.experiment_id).name == "demo"

    logged = run.data.params
    assert len(logged) == 126  # more than one log_batch of 100
    assert logged["train.lr"] == "3e-05"
    assert logged["method.lora.r"] == "128"
    assert logged["many.p119"] == "119"
    assert logged["model.path"] == "p" * 6000
    assert logged["hub.hf_token"] == "***"
    assert logged["hub.api_key"] == "***"

    assert _history(client, run_id, "train/loss") == [(1, 2.5), (2, 2.0), (5, 1.25)]
    assert _history(client, run_id, "train/lr") == [(1, 1e-3), (2, 2e-3), (5, 5e-3)]
    assert _history(client, run_id, "eval/foodie/accuracy") == [(0, 0.75)]

    tags = run.data.tags
    assert tags["vlmtune.run_key"] == "abc123"
    assert tags["vlmtune.stage"] == "train"
    assert tags["vlmtune.git_sha"] == "deadbeef"

    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["plots", "report.md"]
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/loss.png"]
    local = client.download_artifacts(run_id, "report.md", str(tmp_path / "down"))
    assert Path(local).read_text() == "# report\n"
    # A local store keeps its artifacts beside the database.
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_resumed_pipeline_reopens_the_same_run(mlflow_uri, caplog):
    first = MlflowTracker(mlflow_uri, "demo")
    run_id = first.start("run-1")
    first.log_params({"train.lr": 0.1})
    first.log_metrics({"train/loss": 3.0}, step=1)
    first.end("KILLED")
    assert run_status(mlflow_uri, run_id) == "KILLED"

    again = MlflowTracker(mlflow_uri, "demo")
    assert again.start("run-1", run_id=run_id) == run_id
    assert run_status(mlflow_uri, run_id) == "RUNNING"
    with caplog.at_level(logging.WARNING, logger="vlmtune.tracking.tracker"):
        again.log_params({"train.lr": 0.2, "train.seed": 7})  # same key again: no MLflow error
    assert any("train.lr" in r.getMessage() for r in caplog.records)
    again.log_metrics({"train/loss": 2.0}, step=2)
    again.end("FINISHED")

    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.1", "train.seed": "7"}
    assert _history(client, run_id, "train/loss") == [(1, 3.0), (2, 2.0)]
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]


def test_unknown_run_id_starts_a_new_run(mlflow_uri):
    tracker = MlflowTracker(mlflow_uri, "demo")
    run_id = tracker.start("fresh", run_id="0" * 32)
    assert run_id != "0" * 32
    assert run_status(mlflow_uri, run_id) == "RUNNING"


def test_bad_status_is_rejected_and_the_run_stays_open(mlflow_uri):
    tracker = MlflowTracker(mlflow_uri, "demo")
    run_id = tracker.start("run")
    with pytest.raises(ValueError, match="BOGUS"):
        tracker.end("BOGUS")
    assert run_status(mlflow_uri, run_id) == "RUNNING"


def test_logging_before_start_is_an_error(mlflow_uri):
    with pytest.raises(RuntimeError, match="start"):
        MlflowTracker(mlflow_uri, "demo").log_metrics({"train/loss": 1.0}, step=1)


def test_only_secret_keys_are_redacted(mlflow_uri):
    tracker = MlflowTracker(mlflow_uri, "demo")
    run_id = tracker.start("run")
    tracker.log_params({"benchmark.max_new_tokens": 16, "hub.hf_token": "s3cret"})
    params = MlflowClient(mlflow_uri).get_run(run_id).data.params
    assert params == {"benchmark.max_new_tokens": "16", "hub.hf_token": "***"}


def test_null_tracker_does_nothing(tmp_path):
    db = tmp_path / "mlflow.db"
    tracker = open_tracker(False, f"sqlite:///{db}", "demo")
    assert isinstance(tracker, NullTracker)
    assert tracker.start("run", run_id="abc", tags={"a": "b"}) is None
    assert tracker.run_id is None
    tracker.log_params({"train.lr": 1})
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    tracker.set_tags({"a": "b"})
    tracker.log_artifact(tmp_path / "missing.txt")
    tracker.end("FINISHED")
    assert list(tmp_path.iterdir()) == []  # no store, no artifacts


def test_open_tracker_enabled_gives_an_mlflow_tracker(mlflow_uri):
    tracker = open_tracker(True, mlflow_uri, "demo")
    assert isinstance(tracker, MlflowTracker)
    assert (tracker.uri, tracker.experiment_name, tracker.run_id) == (mlflow_uri, "demo", None)

"""System metrics of a client-API run (no active run) reach a real sqlite store."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from vlmtune.tracking import MlflowTracker


def test_system_metrics_are_sampled_while_the_run_is_open(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "sysmetrics", system_metrics=True)
    run_id = tracker.start("run")
    client = MlflowClient(uri)
    deadline = time.monotonic() + 30
    while "system/cpu_utilization_percentage" not in client.get_run(run_id).data.metrics:
        assert time.monotonic() < deadline, client.get_run(run_id).data.metrics
        time.sleep(0.2)
    tracker.end("FINISHED")
    metrics = client.get_run(run_id).data.metrics
    assert 0.0 <= metrics["system/cpu_utilization_percentage"] <= 100.0 * 64
    assert metrics["system/system_memory_usage_megabytes"] > 0
    assert client.get_run(run_id).info.status == "FINISHED"
    assert tracker._monitor is None  # the sampler stopped with the run


def test_system_metrics_off_logs_none(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "sysmetrics")
    run_id = tracker.start("run")
    tracker.end("FINISHED")
    assert not [k for k in MlflowClient(uri).get_run(run_id).data.metrics if
                k.startswith("system/")]

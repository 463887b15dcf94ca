"""``vlmtune run -m``: one parent MLflow run for the sweep, each job's run a nested child."""

from __future__ import annotations

import os
import subprocess
import sys

from mlflow.tracking import MlflowClient


def test_a_two_job_sweep_nests_its_runs_under_one_parent(tmp_path, shared_cache):
    env = {**os.environ, "VLMTUNE_PROGRESS": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run(
        [sys.executable, "-m", "vlmtune.cli", "run", "-m", "experiment=demo",
         "dataset.split_seed=0,1", "pipeline=eval_only", "benchmarks=[heldout]",
         "benchmark.limit=2", "benchmark.scorers=[likelihood]", f"cache_dir={shared_cache}",
         f"output_root={tmp_path}/outputs", f"tracking.uri={uri}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    parents = [r for r in runs if r.data.tags.get("vlmtune.sweep") == "parent"]
    assert len(parents) == 1 and len(runs) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("demo sweep ")
    children = [r for r in runs if r is not parent]
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {parent.info.run_id}
    assert {r.data.params["dataset.split_seed"] for r in children} == {"0", "1"}
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["sweep_summary.md"]
    assert "VLMTUNE_PARENT_RUN_ID" not in parent.data.tags

"""``vlmtune run -m hydra/launcher=submitit_local``: a two-job sweep through Hydra's submitit
launcher (each job a submitit subprocess, as on Slurm), summarised by the sweep callback.

Two jobs of the tiny demo that ingest and score the base model on 2 held-out items: ~40 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mlflow.tracking import MlflowClient


def test_submitit_local_runs_a_two_job_sweep(tmp_path, shared_cache):
    out = tmp_path / "out"
    args = ["run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
            "experiment=demo", "pipeline=eval_only", "benchmark.limit=2", "device=cpu",
            "train.lr=0.001,0.002", f"cache_dir={shared_cache}", f"output_root={out}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    # Parallel jobs on a fresh sqlite store would race to create its tables: create it first.
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    env = {**os.environ, "VLMTUNE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    (sweep_dir,) = (out / "multirun").iterdir()
    # submitit ran each job in its own process and kept its logs in the submitit folder.
    logs = sorted(p.name for p in (sweep_dir / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, logs
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    assert summary["swept"] == ["train.lr"]
    jobs = sorted(summary["jobs"], key=lambda j: j["num"])
    assert [j["num"] for j in jobs] == [0, 1]
    assert [j["status"] for j in jobs] == ["COMPLETED", "COMPLETED"]
    assert "train.lr=0.001" in jobs[0]["overrides"] and "train.lr=0.002" in jobs[1]["overrides"]
    assert jobs[0]["run_dir"] != jobs[1]["run_dir"]  # the swept value is in the run key
    for job in jobs:
        assert job["ran"] == ["ingest", "evaluate"]
        assert (sweep_dir / str(job["num"]) / "run" / "eval").is_dir()

"""The console entry point: clean errors, Hydra sweeps over the registered card groups."""

from __future__ import annotations

import os
import subprocess
import sys


def vlmtune(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "VLMTUNE_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_invalid_value_fails_before_work_with_the_key_named(tmp_path):
    out = vlmtune("run", "experiment=demo", "method.freeze=everything",
                  f"output_root={tmp_path}/outputs", cwd=tmp_path)
    assert out.returncode == 2
    assert "method.freeze='everything' is not allowed" in out.stderr
    assert "tutorial" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "outputs").exists()


def test_unknown_command_prints_usage(tmp_path):
    out = vlmtune("fly", cwd=tmp_path)
    assert out.returncode == 2 and "usage: vlmtune" in out.stderr


def test_multirun_sweeps_a_card_group_value(tmp_path, shared_cache):
    out = vlmtune("ingest", "-m", "experiment=demo", "dataset.split_seed=0,1",
                  f"cache_dir={shared_cache}", f"output_root={tmp_path}/outputs",
                  f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_dirs = sorted((tmp_path / "outputs" / "demo").iterdir())
    assert len(run_dirs) == 2
    assert all((d / "data" / "manifest.json").exists() for d in run_dirs)
    assert out.stdout.count("MLflow run id:") == 2

"""``launcher=torchrun`` on CUDA: NCCL DDP workers, one per visible GPU (at most 2); and the
FlexibleRunner strategies are refused by name until they are wired in. Skipped without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from vlmtune.config import compose_recipe, validate
from vlmtune.errors import ConfigError

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_torchrun_trains_with_nccl_on_cuda(tmp_path, shared_cache):
    nproc = min(torch.cuda.device_count(), 2)
    db = tmp_path / "mlflow.db"
    args = ["run", "experiment=demo", "launcher=torchrun", f"launcher.nproc_per_node={nproc}",
            "device=cuda", "train.max_iters=4", "train.save_every=2",
            "pipeline.stages=[ingest,train]",
            f"cache_dir={shared_cache}", f"output_root={tmp_path / 'out'}",
            f"tracking.uri=sqlite:///{db}"]
    env = {**os.environ, "VLMTUNE_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4]
    (run_dir,) = (tmp_path / "out" / "demo").iterdir()
    rng = torch.load(run_dir / "checkpoints" / "iter_4" / "rng.pt", weights_only=True)
    assert len(rng.get("ranks", [None])) == nproc


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero2"])
def test_flexible_strategies_are_refused_by_name(strategy):
    cfg = compose_recipe(["experiment=demo", f"strategy={strategy}", "launcher=torchrun",
                          "device=cuda"])
    with pytest.raises(ConfigError, match=f"strategy={strategy}"):
        validate(cfg)

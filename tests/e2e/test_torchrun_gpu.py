"""``launcher=torchrun`` on CUDA: NCCL workers, one per visible GPU (at most 2), with DDP and
with the FlexibleRunner strategies (FSDP, ZeRO-2/3) in bf16, whose losses must follow DDP's.
Skipped without CUDA."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

NPROC = min(torch.cuda.device_count(), 2)


def _train_on_cuda(root, cache, *extra) -> dict[int, float]:
    """``vlmtune run`` (ingest, train: 8 iterations) under torchrun on CUDA; train/loss by step."""
    db = root / "mlflow.db"
    args = ["run", "experiment=demo", "launcher=torchrun", f"launcher.nproc_per_node={NPROC}",
            "device=cuda", "train.max_iters=8", "train.save_every=4",
            "pipeline.stages=[ingest,train]", f"cache_dir={cache}",
            f"output_root={root / 'out'}", f"tracking.uri=sqlite:///{db}", *extra]
    env = {**os.environ, "VLMTUNE_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 9))  # once per step, by rank 0
    return {m.step: m.value for m in history}


def _run_dir(root):
    (found,) = (root / "out" / "demo").iterdir()
    return found


def test_torchrun_trains_with_nccl_on_cuda(tmp_path, shared_cache):
    _train_on_cuda(tmp_path, shared_cache)
    rng = torch.load(_run_dir(tmp_path) / "checkpoints" / "iter_8" / "rng.pt",
                     weights_only=True)
    assert len(rng.get("ranks", [None])) == NPROC


@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_zero2", "deepspeed_zero3"])
def test_sharded_strategies_train_on_cuda_like_ddp(strategy, tmp_path, shared_cache):
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    ddp = _train_on_cuda(tmp_path / "ddp", shared_cache)
    sharded = _train_on_cuda(tmp_path / strategy, shared_cache, f"strategy={strategy}")
    # bf16 compute: DeepSpeed keeps bf16 weights with fp32 masters, DDP/FSDP fp32 weights
    # under autocast, so the steps agree to bf16's precision, not bit for bit.
    for step, loss in ddp.items():
        assert abs(sharded[step] - loss) <= 0.05 * abs(loss) + 0.05, (step, sharded, ddp)
    assert (_run_dir(tmp_path / strategy) / "adapter" / "adapter_model.safetensors").is_file()

"""``launcher=torchrun``: the demo trains in two gloo DDP processes on the CPU, rank 0 logs each
step once, and a run killed with SIGKILL (the whole torchrun process group) after a checkpoint
resumes to the uninterrupted run's losses.

Three real ``vlmtune run`` subprocesses, each starting torchrun with two workers (each worker
imports torch + transformers + mmengine): about a minute apiece on 2 loaded cores.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

MAX_ITERS, SAVE_EVERY, PER_RANK_BATCH = 8, 4, 4


def _overrides(root: Path, cache: Path, stages: str) -> list[str]:
    return ["experiment=demo", "launcher=torchrun", "launcher.nproc_per_node=2",
            f"train.max_iters={MAX_ITERS}", f"train.save_every={SAVE_EVERY}",
            f"train.batch_size={PER_RANK_BATCH}", "train.keep_last_n=3",
            f"pipeline.stages={stages}",
            "benchmark.limit=4", "device=cpu", f"cache_dir={cache}", f"output_root={root / 'out'}",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}"]


def _env() -> dict[str, str]:
    return {**os.environ, "VLMTUNE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def _vlmtune(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vlmtune.cli", "run", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def _run_dir(root: Path) -> Path:
    (run_dir,) = (root / "out" / "demo").iterdir()
    return run_dir


def _losses(root: Path) -> dict[int, list[float]]:
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    by_step: dict[int, list[float]] = {}
    for metric in client.get_metric_history(run.info.run_id, "train/loss"):
        by_step.setdefault(metric.step, []).append(metric.value)
    return by_step


def test_two_processes_train_log_once_and_resume_exactly(tmp_path, shared_cache):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _finish(_vlmtune(_overrides(full, shared_cache, "[ingest,train,convert,evaluate]")))
    uninterrupted = _losses(full)
    # Rank 0 alone logs, once per step: steps 1..MAX_ITERS, one value each.
    assert sorted(uninterrupted) == list(range(1, MAX_ITERS + 1))
    assert all(len(v) == 1 for v in uninterrupted.values())
    run_dir = _run_dir(full)
    assert (run_dir / "adapter").is_dir() and (run_dir / "eval").is_dir()
    # Two processes trained: a checkpoint holds both ranks' random states, and a global batch
    # of 2 x the per-rank batch.
    rng = torch.load(run_dir / "checkpoints" / f"iter_{MAX_ITERS}" / "rng.pt",
                     weights_only=True)
    assert len(rng["ranks"]) == 2
    assert rng["sampler"]["world_size"] == 2
    assert rng["sampler"]["batch_size"] == 2 * PER_RANK_BATCH

    args = _overrides(killed, shared_cache, "[ingest,train]")
    proc = _vlmtune(args, start_new_session=True)
    marker = killed / "out" / "demo"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = list(marker.glob(f"*/checkpoints/iter_{SAVE_EVERY}/COMPLETED"))
        if done or proc.poll() is not None:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI, torchrun and both workers
    proc.communicate(timeout=60)
    assert done, "no checkpoint before the kill"
    assert not (_run_dir(killed) / "adapter").exists(), "the run finished before the kill"

    out = _finish(_vlmtune(args))
    assert "resumed from" in out
    resumed = _losses(killed)
    assert sorted(resumed) == list(range(1, MAX_ITERS + 1))
    for step in range(1, MAX_ITERS + 1):
        for value in resumed[step]:
            assert abs(value - uninterrupted[step][0]) < 1e-5, (step, value, uninterrupted[step])

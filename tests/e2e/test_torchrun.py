"""``launcher=torchrun``: the demo trains in two gloo DDP processes on the CPU, rank 0 logs each
step once, a run killed with SIGKILL (the whole torchrun process group) after a checkpoint
resumes to the uninterrupted run's losses, and two "nodes" of one process each train as one
node of two.

Real ``vlmtune run`` subprocesses, each starting torchrun with two workers (each worker
imports torch + transformers + mmengine): about a minute apiece on 2 loaded cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch
from tests.fixtures.torchrun import (
    MAX_ITERS,
    PER_RANK_BATCH,
    SAVE_EVERY,
    assert_same_losses,
    finish,
    kill_after_first_checkpoint,
    losses,
    overrides,
    run_dir,
    start,
)

from vlmtune.training.distributed import free_port


def test_two_processes_train_log_once_and_resume_exactly(tmp_path, shared_cache,
                                                         ddp_reference):
    uninterrupted = losses(ddp_reference)
    # Rank 0 alone logs, once per step: steps 1..MAX_ITERS, one value each.
    assert sorted(uninterrupted) == list(range(1, MAX_ITERS + 1))
    assert all(len(v) == 1 for v in uninterrupted.values())
    full = run_dir(ddp_reference)
    assert (full / "adapter").is_dir() and (full / "eval").is_dir()
    # Two processes trained: a checkpoint holds both ranks' random states, and a global batch
    # of 2 x the per-rank batch.
    rng = torch.load(full / "checkpoints" / f"iter_{MAX_ITERS}" / "rng.pt", weights_only=True)
    assert len(rng["ranks"]) == 2
    assert rng["sampler"]["world_size"] == 2
    assert rng["sampler"]["batch_size"] == 2 * PER_RANK_BATCH
    assert (full / "checkpoints" / f"iter_{SAVE_EVERY}" / "optimizer.pt").is_file()

    args = overrides(tmp_path, shared_cache, "[ingest,train]")
    kill_after_first_checkpoint(args, tmp_path)
    out = finish(start(args))
    assert "resumed from" in out
    assert_same_losses(losses(tmp_path), uninterrupted)


def test_two_nodes_train_like_one_node_of_two_processes(tmp_path, shared_cache, ddp_reference):
    """The README's multi-node recipe, both "nodes" on this machine: node 0 runs ``vlmtune run
    … launcher.nnodes=2`` (one process per node), node 1 only the train worker under its own
    torchrun, joining node 0's. The world is the reference's (two ranks, the same global
    batch), so every step's loss is the reference's."""
    port = free_port()
    node0 = start(overrides(tmp_path, shared_cache, "[ingest,train]",
                            "launcher.nproc_per_node=1", "launcher.nnodes=2",
                            "launcher.master_addr=127.0.0.1", f"launcher.master_port={port}"))
    out_root = tmp_path / "out" / "demo"
    deadline = time.monotonic() + 120
    while not list(out_root.glob("*/config.yaml")) and node0.poll() is None:
        assert time.monotonic() < deadline, "node 0 wrote no run directory"
        time.sleep(0.1)
    (config,) = out_root.glob("*/config.yaml")
    run = config.parent
    node1 = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", "--nnodes=2",
         "--node-rank=1", "--master-addr=127.0.0.1", f"--master-port={port}",
         "-m", "vlmtune.pipelines.train_worker", str(run), run.name],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        finish(node0)
        node1_out, _ = node1.communicate(timeout=120)
        assert node1.returncode == 0, node1_out[-3000:]
    finally:
        node1.kill()
    assert_same_losses(losses(tmp_path), losses(ddp_reference))
    rng = torch.load(run / "checkpoints" / f"iter_{MAX_ITERS}" / "rng.pt", weights_only=True)
    assert len(rng["ranks"]) == 2 and rng["sampler"]["world_size"] == 2
    assert (run / "adapter").is_dir()

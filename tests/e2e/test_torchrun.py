"""``launcher=torchrun``: the demo trains in two gloo DDP processes on the CPU, rank 0 logs each
step once, and a run killed with SIGKILL (the whole torchrun process group) after a checkpoint
resumes to the uninterrupted run's losses.

Real ``vlmtune run`` subprocesses, each starting torchrun with two workers (each worker
imports torch + transformers + mmengine): about a minute apiece on 2 loaded cores.
"""

from __future__ import annotations

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

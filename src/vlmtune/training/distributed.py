"""Data-parallel processes: launching the train stage under torchrun, and what a worker needs.

The pipeline (one process) runs ``python -m torch.distributed.run … -m <worker module>`` for
the train stage; each worker calls :func:`init` (NCCL on CUDA, gloo on the CPU: mmengine's own
``launcher='pytorch'`` assumes CUDA) and the engine wraps the model in DDP itself. Rank 0 alone
writes; the helpers below are no-ops in a single process.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from vlmtune.config.schema import LauncherConfig
from vlmtune.errors import StageError

log = logging.getLogger(__name__)

WORKER_ENV = "VLMTUNE_TORCHRUN_WORKER"  # set by launch(): this process is one of the workers


def in_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(launcher: LauncherConfig, module: str, args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run <launcher flags> -m module args``."""
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nproc-per-node={launcher.nproc_per_node}", f"--nnodes={launcher.nnodes}",
           "--max-restarts=0"]
    if launcher.rdzv_endpoint:
        cmd += [f"--rdzv-backend={launcher.rdzv_backend or 'c10d'}",
                f"--rdzv-endpoint={launcher.rdzv_endpoint}",
                f"--rdzv-id={launcher.rdzv_id or 'vlmtune'}"]
    else:
        port = launcher.master_port or free_port()
        cmd += [f"--node-rank={launcher.node_rank}", f"--master-addr={launcher.master_addr}",
                f"--master-port={port}"]
    return [*cmd, "-m", module, *args]


def launch(launcher: LauncherConfig, module: str, args: Sequence[str]) -> None:
    """Run ``module`` under torchrun and wait; Ctrl-C / SIGTERM here stop the workers too."""
    cmd = torchrun_command(launcher, module, args)
    log.info("train: %d process(es) per node x %d node(s): %s", launcher.nproc_per_node,
             launcher.nnodes, " ".join(cmd[1:]))
    child = subprocess.Popen(cmd, env={**os.environ, WORKER_ENV: "1"})
    try:
        code = child.wait()
    except BaseException:
        child.send_signal(signal.SIGTERM)  # torchrun passes it on to every worker
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    if code:
        raise StageError(f"train: torchrun exited with status {code} (launcher=torchrun, "
                         f"launcher.nproc_per_node={launcher.nproc_per_node}); the workers' "
                         "errors are above")


def die_with_parent() -> None:
    """End this worker when torchrun dies (torchrun starts workers in sessions of their own,
    so a ``kill -9`` of the job's process group would leave them training): Linux's parent
    death signal, else a thread watching the parent."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        import threading
        import time

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True, name="vlmtune-parent-watch").start()
    if os.getppid() != parent:  # died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def init(device: str) -> str:
    """Join the process group torchrun set up; return this worker's device (``cuda:<local
    rank>`` on CUDA, else ``cpu``)."""
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device, backend = f"cuda:{local}", "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.debug("rank %d of %d on %s (%s)", rank(), world_size(), device, backend)
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    if world_size() > 1:
        dist.barrier()


def collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def mean_loss_total_tokens(loss: float, tokens: int) -> tuple[float, int]:
    """The step's loss averaged over ranks and its tokens summed (unchanged in one process)."""
    if world_size() == 1:
        return loss, tokens
    both = torch.tensor([loss, float(tokens)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(both)
    return float(both[0]) / world_size(), int(both[1])


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on every rank (None in one process)."""
    if world_size() == 1:
        return None
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out

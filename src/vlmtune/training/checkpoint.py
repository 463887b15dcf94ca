"""Our own training checkpoints: atomic, loadable with ``weights_only=True``, marker last.

``checkpoints/iter_<N>/`` holds ``trainable.safetensors`` (every parameter that trains),
``optimizer.pt``, ``scheduler.pt``, ``rng.pt`` (the random state of the run: torch (CPU and
CUDA), Python and NumPy generators, the batch sampler's position, whose order is a function
of its seed, and under fp16 AMP the loss scaler's state) and ``meta.json``; ``COMPLETED`` is
written last, then the temp directory is renamed into place. A directory without the marker
is ignored on resume (and reported).
Checkpoints fall on optimizer steps, so no gradient accumulation is ever in flight in one.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vlmtune.errors import CheckpointError

log = logging.getLogger(__name__)

MARKER = "COMPLETED"
ITER_DIR = re.compile(r"^iter_(\d+)$")


@dataclass
class Checkpoint:
    iteration: int
    path: Path


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (views of the live tensors, not copies)."""
    return {name: p.detach().contiguous().cpu()
            for name, p in model.named_parameters() if p.requires_grad}


def staging_path(ckpt_root: Path, iteration: int) -> Path:
    """Where ``iter_<iteration>/`` is written before it is renamed into place."""
    return ckpt_root / f".iter_{iteration}.tmp"


def begin_checkpoint(ckpt_root: Path, iteration: int) -> Path:
    """A fresh, empty staging directory for ``iter_<iteration>/``."""
    tmp = staging_path(ckpt_root, iteration)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def save_checkpoint(ckpt_root: Path, iteration: int, *, model: torch.nn.Module | None = None,
                    trainable: dict[str, torch.Tensor] | None = None,
                    optimizer: torch.optim.Optimizer | None = None, schedulers: list[Any],
                    extra: dict[str, Any] | None = None,
                    sampler: dict[str, Any] | None = None,
                    scaler: dict[str, Any] | None = None,
                    ranks: list[dict[str, Any]] | None = None, staged: bool = False) -> Path:
    """Write ``iter_<iteration>/`` atomically; ``ranks``: every DDP rank's random state
    (:func:`rng_state` of each, by rank), restored per rank on resume.

    The trainable weights are ``trainable`` (by name) or ``model``'s; ``optimizer=None`` when
    the optimizer state is already in the staging directory (``staged``: written there by
    every rank of a sharded strategy after :func:`begin_checkpoint`)."""
    final = ckpt_root / f"iter_{iteration}"
    tmp = staging_path(ckpt_root, iteration) if staged else begin_checkpoint(ckpt_root,
                                                                             iteration)
    save_file(trainable if trainable is not None else trainable_state(model),
              tmp / "trainable.safetensors")
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save([s.state_dict() for s in schedulers], tmp / "scheduler.pt")
    state = {**_rng_state(), **({"sampler": sampler} if sampler else {}),
             **({"scaler": scaler} if scaler else {}), **({"ranks": ranks} if ranks else {})}
    torch.save(state, tmp / "rng.pt")
    (tmp / "meta.json").write_text(json.dumps({"iteration": iteration, **(extra or {})}, indent=2))
    (tmp / MARKER).write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def find_checkpoints(ckpt_root: Path) -> list[Checkpoint]:
    """Completed checkpoints, oldest first; incomplete ones are reported and skipped."""
    found = []
    if not ckpt_root.is_dir():
        return found
    for path in ckpt_root.iterdir():
        match = ITER_DIR.match(path.name)
        if not (match and path.is_dir()):
            continue
        if not (path / MARKER).exists():
            log.warning("ignoring %s: no %s marker (an interrupted save)", path, MARKER)
            continue
        found.append(Checkpoint(int(match.group(1)), path))
    return sorted(found, key=lambda c: c.iteration)


def latest_checkpoint(ckpt_root: Path) -> Checkpoint | None:
    found = find_checkpoints(ckpt_root)
    return found[-1] if found else None


def prune_checkpoints(ckpt_root: Path, keep_last_n: int) -> list[Path]:
    """Delete all but the newest ``keep_last_n`` completed checkpoints."""
    found = find_checkpoints(ckpt_root)
    doomed = [c.path for c in found[:max(len(found) - keep_last_n, 0)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def load_trainable(model: torch.nn.Module, ckpt: Path) -> None:
    state = load_file(ckpt / "trainable.safetensors")
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise CheckpointError(f"{ckpt}: trainable parameters do not match the model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it "
                              "written by a run with another method or model?")
    model.load_state_dict(state, strict=False)


def load_training_state(ckpt: Path, *, optimizer: torch.optim.Optimizer | None,
                        schedulers: list[Any]) -> dict[str, Any]:
    """Restore optimizer (unless None: a sharded strategy reads its own) and schedulers; return
    the random state to apply when training resumes (with the sampler position under
    ``"sampler"`` when the checkpoint has one)."""
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    states = torch.load(ckpt / "scheduler.pt", weights_only=True)
    if len(states) != len(schedulers):
        raise CheckpointError(f"{ckpt}: {len(states)} scheduler states for {len(schedulers)} "
                              "schedulers")
    for scheduler, state in zip(schedulers, states, strict=True):
        scheduler.load_state_dict(state)
    return torch.load(ckpt / "rng.pt", weights_only=True)


def rng_state() -> dict[str, Any]:
    """This process's random state (torch CPU and CUDA, Python, NumPy)."""
    return _rng_state()


def _rng_state() -> dict[str, Any]:
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [version, list(mt), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            log.warning("not restoring the CUDA RNG: saved for %d devices, %d present",
                        len(state["cuda"]), torch.cuda.device_count())

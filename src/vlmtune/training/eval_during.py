"""Evaluation during training: a step callback that scores the model every N steps and keeps
the best checkpoint by that score.

Training knows nothing of benchmarks: the caller passes ``evaluate``, a plain callable that
scores the model as it is and returns one number (e.g. accuracy on a fixed subset). The score
is logged with that step's metrics under ``name``. The model runs in eval mode and the random
state (torch, CUDA, Python, NumPy) is restored afterwards, so a run with evaluation trains
exactly as one without it, and a resumed run exactly as the uninterrupted one.

``checkpoints/best/`` (keep_best): the trainable weights of the best-scoring step, with
``meta.json`` (``iteration``, ``metric``, ``value``), written atomically, ``COMPLETED`` last.
A later step replaces it only when strictly better, so ties keep the earlier step.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlmtune.training import checkpoint as ckpt_io
from vlmtune.training.hooks import StepCallback

log = logging.getLogger(__name__)

BEST = "best"


class EvalEvery:
    """A step callback ``(step, metrics)``: forwards every step to ``on_step``; on every
    ``every``-th step first adds ``{name: evaluate()}`` to that step's metrics, and with
    ``best_root`` saves the model's trainable weights there when the score is a new best."""

    def __init__(self, on_step: StepCallback, evaluate: Callable[[], float], *, every: int,
                 name: str, model: torch.nn.Module, best_root: Path | None = None) -> None:
        self.on_step, self.evaluate, self.every, self.name = on_step, evaluate, every, name
        self.model, self.best_root = model, best_root
        self.best = read_best(best_root)
        self.best_value = None if self.best is None else self.best["value"]

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        if step % self.every == 0:
            value = self._score()
            metrics = {**metrics, self.name: value}
            log.info("step %d: %s %.4f", step, self.name, value)
            if self.best_root is not None and (self.best_value is None
                                               or value > self.best_value):
                save_best(self.best_root, self.model, iteration=step, metric=self.name,
                          value=value)
                self.best_value = value
        self.on_step(step, metrics)

    def _score(self) -> float:
        """``evaluate()`` in eval mode, leaving the training mode and random state as found."""
        state, was_training = ckpt_io.rng_state(), self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return float(self.evaluate())
        finally:
            self.model.train(was_training)
            ckpt_io.restore_rng(state)


def best_dir(ckpt_root: Path) -> Path:
    return Path(ckpt_root) / BEST


def read_best(ckpt_root: Path | None) -> dict | None:
    """``meta.json`` of ``<ckpt_root>/best/`` when it is complete, else None."""
    if ckpt_root is None:
        return None
    _recover(ckpt_root)
    path = best_dir(ckpt_root)
    if not (path / ckpt_io.MARKER).exists():
        return None
    return json.loads((path / "meta.json").read_text())


def save_best(ckpt_root: Path, model: torch.nn.Module, *, iteration: int, metric: str,
              value: float) -> Path:
    """Write ``<ckpt_root>/best/`` atomically (temp dir, marker last, rename)."""
    _recover(ckpt_root)
    final, tmp = best_dir(ckpt_root), Path(ckpt_root) / f".{BEST}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(ckpt_io.trainable_state(model), tmp / "trainable.safetensors")
    meta = {"iteration": iteration, "metric": metric, "value": value}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (tmp / ckpt_io.MARKER).write_text("ok\n")
    old = Path(ckpt_root) / f".{BEST}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    log.info("best %s %.4f at iteration %d: %s", metric, value, iteration, final)
    return final


def _recover(ckpt_root: Path) -> None:
    """Put back the previous best when a save was interrupted between its two renames."""
    final, old = best_dir(ckpt_root), Path(ckpt_root) / f".{BEST}.old"
    if not final.exists() and (old / ckpt_io.MARKER).exists():
        old.rename(final)


def load_best(model: torch.nn.Module, ckpt_root: Path) -> dict | None:
    """Load ``<ckpt_root>/best/`` into ``model``'s trainable parameters; its meta, or None
    when there is no completed best checkpoint."""
    meta = read_best(ckpt_root)
    if meta is not None:
        ckpt_io.load_trainable(model, best_dir(ckpt_root))
    return meta

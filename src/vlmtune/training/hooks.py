"""mmengine hooks: per-step metrics + progress, atomic checkpoints, resume."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook

from vlmtune.errors import CheckpointError
from vlmtune.progress import Bar
from vlmtune.training import checkpoint as ckpt_io
from vlmtune.training import distributed
from vlmtune.training.shard_state import ReplicatedState

log = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]


def _schedulers(runner) -> list[Any]:
    schedulers = runner.param_schedulers or []
    return list(schedulers.values())[0] if isinstance(schedulers, dict) else list(schedulers)


class StepMetricsHook(Hook):
    """Reports loss, learning rate and tokens/s of every iteration; moves the progress bar.

    Under DDP the loss is the mean of every rank's and the tokens their sum, reported by rank 0
    alone (once per step)."""

    priority = "NORMAL"  # before ParamSchedulerHook (LOW): the lr is the one this step used

    def __init__(self, on_step: StepCallback, bar: Bar) -> None:
        self.on_step, self.bar = on_step, bar
        self._start = 0.0

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        self._start = time.perf_counter()

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: dict | None = None) -> None:
        step = runner.iter + 1
        loss = float(outputs["loss"].detach()) if outputs else float("nan")
        tokens = int(data_batch["attention_mask"].sum()) if data_batch else 0
        loss, tokens = distributed.mean_loss_total_tokens(loss, tokens)
        if not distributed.is_main():
            return
        seconds = max(time.perf_counter() - self._start, 1e-9)
        metrics = {"train/loss": loss, "train/lr": runner.optim_wrapper.get_lr()["lr"][0],
                   "train/tokens_per_s": tokens / seconds}
        self.on_step(step, metrics)
        self.bar.update(completed=step, status=f"loss {loss:.4f}")


class CheckpointHook(Hook):
    """Every ``every`` iterations (and at the end): write a checkpoint, keep the last N.

    Every rank takes part (a sharded strategy gathers the trainable weights and writes its
    optimizer shard into the staging directory); rank 0 writes the rest, the marker last.
    ``before_save(step)`` runs first on rank 0 (the pipeline flushes buffered step metrics
    there, so every step a checkpoint covers has reached the tracker before the checkpoint
    exists).
    """

    priority = "VERY_LOW"  # after the scheduler has stepped: saved state is the next step's

    def __init__(self, root: Path, every: int, keep_last_n: int, max_iters: int,
                 extra: dict[str, Any], before_save: Callable[[int], None] | None = None, *,
                 state: Callable[[Any], ReplicatedState] = ReplicatedState) -> None:
        self.root, self.every, self.keep, self.max_iters = root, every, keep_last_n, max_iters
        self.extra, self.before_save, self.state = extra, before_save, state

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None,
                         outputs: dict | None = None) -> None:
        step = runner.iter + 1
        if step % self.every and step != self.max_iters:
            return
        optim_wrapper = runner.optim_wrapper
        counts = getattr(optim_wrapper, "_accumulative_counts", None)  # DeepSpeed counts itself
        if counts and optim_wrapper._inner_count % counts:
            raise CheckpointError(f"iteration {step} is not an optimizer step (grad_accum "
                                  f"{counts}): refusing to save a checkpoint with gradients "
                                  "still accumulating")
        state = self.state(runner)
        ranks = distributed.gather(ckpt_io.rng_state())  # DDP: each rank's random state
        main = distributed.is_main()
        if main:
            ckpt_io.begin_checkpoint(self.root, step)
        distributed.barrier()  # the staging directory exists for every rank
        trainable = state.trainable()
        state.save_optimizer(ckpt_io.staging_path(self.root, step))
        distributed.barrier()  # every rank's share is written
        if not main:
            return  # rank 0 alone writes the rest
        if self.before_save is not None:
            self.before_save(step)
        sampler = runner.train_loop.dataloader.batch_sampler
        path = ckpt_io.save_checkpoint(self.root, step, trainable=trainable,
                                       schedulers=_schedulers(runner), extra=self.extra,
                                       sampler=_sampler_state(sampler, step),
                                       scaler=_scaler_state(optim_wrapper), ranks=ranks,
                                       staged=True)
        pruned = ckpt_io.prune_checkpoints(self.root, self.keep)
        log.info("saved %s%s", path, f" (pruned {len(pruned)})" if pruned else "")


def _sampler_state(sampler: Any, step: int) -> dict[str, Any] | None:
    return sampler.state(step) if hasattr(sampler, "state") else None


def _scaler_state(optim_wrapper: Any) -> dict[str, Any] | None:
    """The fp16 loss scaler's state (AMP only; a disabled scaler has none)."""
    scaler = getattr(optim_wrapper, "loss_scaler", None)
    return (scaler.state_dict() or None) if scaler is not None else None


class ResumeHook(Hook):
    """Restores a checkpoint's optimizer, schedulers and loss scale before training and its
    RNG state right before the next step (the engine loads the trainable weights into the
    model before it is wrapped).

    mmengine replays the data loader up to the restored iteration after ``before_train``.
    The batch sampler was built to start at that iteration (``fast_forwarded``), so the replay
    is answered without loading data. The RNG state is applied after the replay, at the first
    ``before_train_iter``.
    """

    priority = "VERY_HIGH"

    def __init__(self, checkpoint: ckpt_io.Checkpoint, *, fast_forwarded: bool = True,
                 state: Callable[[Any], ReplicatedState] = ReplicatedState) -> None:
        self.checkpoint, self.fast_forwarded, self.state = checkpoint, fast_forwarded, state
        self._rng: dict[str, Any] | None = None

    def before_train(self, runner) -> None:
        path, step = self.checkpoint.path, self.checkpoint.iteration
        self.state(runner).load_optimizer(path)
        self._rng = ckpt_io.load_training_state(path, optimizer=None,
                                                schedulers=_schedulers(runner))
        self._rng = _this_ranks(self._rng, path)
        scaler = self._rng.pop("scaler", None)
        if scaler is not None and getattr(runner.optim_wrapper, "loss_scaler", None) is not None:
            runner.optim_wrapper.loss_scaler.load_state_dict(scaler)
        saved = self._rng.pop("sampler", None)
        current = _sampler_state(runner.train_loop.dataloader.batch_sampler, step)
        if saved is not None and saved != current:
            log.warning("the batch sampler differs from the one that wrote %s (%s, now %s): the "
                        "resumed run will not see the batches the interrupted one would have",
                        path, saved, current)
        runner.train_loop._iter = step
        runner.optim_wrapper._inner_count = step
        if self.fast_forwarded:
            loop = runner.train_loop
            loop.dataloader_iterator = SkipReplay(loop.dataloader_iterator, step)
        log.info("resumed from %s (iteration %d)", path, step)

    def before_train_iter(self, runner, batch_idx: int, data_batch: Any = None) -> None:
        if self._rng is not None:
            if data_batch is None:
                raise CheckpointError("the training loop did not replay the data loader as "
                                      "mmengine 0.10 does; cannot resume without it")
            ckpt_io.restore_rng(self._rng)
            self._rng = None


def _this_ranks(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """This rank's random state from a checkpoint's (rank 0's own, plus ``ranks`` under DDP;
    the sampler and scaler entries are shared)."""
    ranks = state.pop("ranks", None)
    world, rank = distributed.world_size(), distributed.rank()
    if ranks is None and world == 1:
        return state
    if ranks is None or len(ranks) != world:
        log.warning("%s holds the random state of %s process(es), this run has %d: not "
                    "restoring it per rank", path, len(ranks) if ranks else 1, world)
        return state
    shared = {k: state[k] for k in ("sampler", "scaler") if k in state}
    return {**ranks[rank], **shared}


class SkipReplay:
    """A data loader iterator whose first ``skip`` items are ``None``, loaded from nowhere.

    mmengine's IterBasedTrainLoop calls ``next()`` once per finished iteration on resume to
    skip data; with a batch sampler that already starts past those batches there is nothing to
    skip, so those calls return at once.
    """

    def __init__(self, inner: Any, skip: int) -> None:
        self.inner, self.skip = inner, skip

    def __iter__(self) -> SkipReplay:
        return self

    def __next__(self) -> Any:
        if self.skip > 0:
            self.skip -= 1
            return None
        return next(self.inner)

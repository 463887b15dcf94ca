"""The training engine over a real mmengine Runner: metrics, schedule, checkpoints, resume."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from vlmtune.config.schema import TrainConfig
from vlmtune.errors import CheckpointError
from vlmtune.training.checkpoint import (
    MARKER,
    latest_checkpoint,
    load_trainable,
    prune_checkpoints,
    save_checkpoint,
    trainable_state,
)
from vlmtune.training.engine import TrainResult, train
from vlmtune.training.sampler import SeededShuffleSampler

VOCAB, SEQ, SAMPLES = 16, 6, 10
CHECKPOINT_FILES = {MARKER, "trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt",
                    "meta.json"}
TRAINABLE = {"embed.weight", "head.weight", "head.bias"}


@dataclass
class Output:
    loss: torch.Tensor


class TinyLM(nn.Module):
    """Embedding + Linear next-token model with one frozen parameter (never checkpointed)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.scale = nn.Parameter(torch.full((8,), 0.5), requires_grad=False)
        self.head = nn.Linear(8, VOCAB)

    def forward(self, input_ids, attention_mask, labels, pixel_values=None):
        logits = self.head(self.embed(input_ids) * self.scale)
        return Output(nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(),
                                                  ignore_index=-100))


class TokenDataset(Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, VOCAB, (SAMPLES, SEQ), generator=generator)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows[index]


def collate(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    input_ids = torch.stack(rows)
    labels = input_ids.roll(-1, dims=1)
    labels[:, -1] = -100
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "labels": labels}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights (``trainable_state`` shares storage with the model)."""
    return {name: t.clone() for name, t in trainable_state(model).items()}


def fresh_model() -> TinyLM:
    torch.manual_seed(1234)
    return TinyLM()


def train_config(**changes) -> TrainConfig:
    values = {"lr": 1e-2, "batch_size": 2, "max_iters": 12, "save_every": 4, "keep_last_n": 2,
              "seed": 0, "warmup_ratio": 0.25}  # 3 warmup iterations, then 9 of cosine decay
    return TrainConfig(**{**values, **changes})


def run_training(model: nn.Module, root: Path, on_step, **changes) -> TrainResult:
    return train(model, dataset=TokenDataset(), collate_fn=collate,
                 param_groups=[{"params": [p for p in model.parameters() if p.requires_grad]}],
                 cfg=train_config(**changes), work_dir=root / "logs",
                 checkpoint_dir=root / "checkpoints", on_step=on_step,
                 extra_meta={"run_key": "k123"})


@dataclass
class Run:
    root: Path
    steps: dict[int, dict[str, float]]
    initial: dict[str, torch.Tensor]
    final: dict[str, torch.Tensor]
    frozen_after: torch.Tensor
    result: TrainResult


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Run:
    """One uninterrupted 12-iteration run, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("run_a")
    steps: dict[int, dict[str, float]] = {}
    model = fresh_model()
    initial = snapshot(model)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLMTUNE_PROGRESS", "0")
        result = run_training(model, root, lambda step, metrics: steps.setdefault(step, metrics))
    return Run(root, steps, initial, snapshot(model), model.scale.detach().clone(), result)


def test_every_step_reports_loss_and_lr_follows_warmup_then_cosine(run_a):
    assert run_a.result == TrainResult(iterations=12, resumed_from=None)
    assert sorted(run_a.steps) == list(range(1, 13))
    for metrics in run_a.steps.values():
        assert set(metrics) == {"train/loss", "train/lr", "train/tokens_per_s"}
        assert math.isfinite(metrics["train/loss"]) and metrics["train/tokens_per_s"] > 0

    # Step 1's loss is the untrained model's loss on the sampler's first two samples.
    order = SeededShuffleSampler(SAMPLES, seed=0).epoch_order(0)
    dataset = TokenDataset()
    with torch.no_grad():
        want = fresh_model()(**collate([dataset[i] for i in order[:2]])).loss.item()
    assert run_a.steps[1]["train/loss"] == pytest.approx(want, abs=1e-6)

    lrs = [run_a.steps[s]["train/lr"] for s in range(1, 13)]
    # Linear warmup from lr * 1e-3 over 3 iterations, then cosine from lr to 0 over 9.
    assert lrs[:3] == pytest.approx([1e-5, 1e-2 * (1e-3 + 0.999 / 2), 1e-2])
    cosine = [0.5 * 1e-2 * (1 + math.cos(math.pi * i / 9)) for i in range(9)]
    assert lrs[3:] == pytest.approx(cosine)
    assert all(a < b for a, b in zip(lrs[:2], lrs[1:3], strict=True))
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:], strict=False))


def test_checkpoints_keep_the_last_two_complete_ones(run_a):
    ckpt_root = run_a.root / "checkpoints"
    assert sorted(p.name for p in ckpt_root.iterdir()) == ["iter_12", "iter_8"]  # no temp dirs
    for iteration in (8, 12):
        path = ckpt_root / f"iter_{iteration}"
        assert {p.name for p in path.iterdir()} == CHECKPOINT_FILES
        assert json.loads((path / "meta.json").read_text()) == {"iteration": iteration,
                                                               "run_key": "k123"}
        assert set(load_file(path / "trainable.safetensors")) == TRAINABLE
    assert latest_checkpoint(ckpt_root).iteration == 12
    saved = load_file(ckpt_root / "iter_12" / "trainable.safetensors")
    for name in TRAINABLE:
        torch.testing.assert_close(saved[name], run_a.final[name], rtol=0, atol=0)


def test_training_changes_the_trainable_weights_only(run_a):
    for name in TRAINABLE:
        assert (run_a.final[name] - run_a.initial[name]).abs().max() > 1e-3, name
    torch.testing.assert_close(run_a.frozen_after, torch.full((8,), 0.5))


def test_interrupted_run_resumes_from_its_checkpoint_and_matches(run_a, tmp_path):
    def stop_after_9(step, metrics):
        if step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_training(fresh_model(), tmp_path, stop_after_9)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_4", "iter_8"]

    steps: dict[int, dict[str, float]] = {}
    model = fresh_model()
    result = run_training(model, tmp_path, lambda step, metrics: steps.setdefault(step, metrics))

    assert result == TrainResult(iterations=12, resumed_from=8)
    assert sorted(steps) == [9, 10, 11, 12]
    for step in steps:
        assert steps[step]["train/loss"] == pytest.approx(run_a.steps[step]["train/loss"],
                                                          abs=1e-5), step
        assert steps[step]["train/lr"] == pytest.approx(run_a.steps[step]["train/lr"]), step
    final = trainable_state(model)
    for name in TRAINABLE:
        torch.testing.assert_close(final[name], run_a.final[name], rtol=0, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_12", "iter_8"]


def test_finished_run_loads_its_last_checkpoint_without_training(run_a, tmp_path):
    shutil.copytree(run_a.root / "checkpoints", tmp_path / "checkpoints")
    steps: list[int] = []
    model = fresh_model()
    result = run_training(model, tmp_path, lambda step, metrics: steps.append(step))
    assert result == TrainResult(iterations=12, resumed_from=12)
    assert steps == []
    final = trainable_state(model)
    for name in TRAINABLE:
        torch.testing.assert_close(final[name], run_a.final[name], rtol=0, atol=0)


# --- checkpoint I/O --------------------------------------------------------------------------


def _save(root: Path, iteration: int, model: nn.Module | None = None) -> Path:
    model = model or fresh_model()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    return save_checkpoint(root, iteration, model=model, optimizer=optimizer, schedulers=[])


def test_incomplete_checkpoint_is_ignored_and_reported(tmp_path, caplog):
    _save(tmp_path, 8)
    shutil.copytree(tmp_path / "iter_8", tmp_path / "iter_10")
    (tmp_path / "iter_10" / MARKER).unlink()  # a save interrupted before its marker
    (tmp_path / ".iter_12.tmp").mkdir()  # a save interrupted before its rename
    with caplog.at_level(logging.WARNING, logger="vlmtune.training.checkpoint"):
        found = latest_checkpoint(tmp_path)
    assert found is not None
    assert (found.iteration, found.path) == (8, tmp_path / "iter_8")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "iter_10" in warnings[0]


def test_latest_checkpoint_of_a_missing_directory_is_none(tmp_path):
    assert latest_checkpoint(tmp_path / "nope") is None


def test_prune_keeps_the_newest_n_by_iteration_number(tmp_path):
    for iteration in (2, 4, 10, 12):
        _save(tmp_path, iteration)
    doomed = prune_checkpoints(tmp_path, keep_last_n=2)
    assert doomed == [tmp_path / "iter_2", tmp_path / "iter_4"]  # 10 > 4, not "10" < "4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_10", "iter_12"]
    assert prune_checkpoints(tmp_path, keep_last_n=2) == []


def test_checkpoint_of_another_model_is_rejected(tmp_path):
    path = _save(tmp_path, 4)
    other = fresh_model()
    other.head.bias.requires_grad_(False)
    with pytest.raises(CheckpointError, match="head.bias"):
        load_trainable(other, path)

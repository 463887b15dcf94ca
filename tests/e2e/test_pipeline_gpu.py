"""The demo pipeline on CUDA (``device=cuda``): trained under bf16 AMP, evaluated on the GPU.
Skipped cleanly without CUDA."""

from __future__ import annotations

import logging

import pytest
import torch
from mlflow.tracking import MlflowClient

from vlmtune.config import compose_recipe, validate
from vlmtune.evaluation.multiple_choice import MultipleChoiceScorer
from vlmtune.pipelines.runner import run_pipeline

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
BENCH = "foodie_synth_sivqa"


def test_demo_pipeline_runs_on_cuda(demo_overrides, monkeypatch, caplog):
    devices: list[str] = []
    original = MultipleChoiceScorer._image_inputs

    def spy(self, parts):
        inputs = original(self, parts)
        devices.extend(v.device.type for v in inputs.values())
        return inputs

    monkeypatch.setattr(MultipleChoiceScorer, "_image_inputs", spy)
    recipe = validate(compose_recipe([*demo_overrides, "device=cuda", "train.max_iters=200",
                                      "train.save_every=100"]))
    with caplog.at_level(logging.INFO, logger="vlmtune"):
        result = run_pipeline(recipe)
    assert result.ran == ["ingest", "train", "convert", "evaluate"]
    assert "train: precision bf16 on cuda" in caplog.text  # AMP, the CUDA default
    assert devices and set(devices) == {"cuda"}  # evaluation inputs went to the GPU
    run = MlflowClient(recipe.tracking.uri).get_run(result.mlflow_run_id)
    losses = {m.step: m.value for m in MlflowClient(recipe.tracking.uri).get_metric_history(
        result.mlflow_run_id, "train/loss")}
    assert sorted(losses) == list(range(1, 201))
    assert sum(losses[s] for s in range(181, 201)) < sum(losses[s] for s in range(1, 21))
    base = run.data.metrics[f"eval_base/{BENCH}/accuracy"]
    tuned = run.data.metrics[f"eval/{BENCH}/accuracy"]
    assert tuned > base, (base, tuned)

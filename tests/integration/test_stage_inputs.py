"""Each stage reruns exactly when its inputs changed: eval_only → finetune evaluates the tuned
model, a benchmark-only change re-evaluates without retraining; the log says why."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow.tracking import MlflowClient

from vlmtune.config import compose_recipe, validate
from vlmtune.pipelines.runner import run_pipeline

BENCH = "foodie_synth_sivqa"
TINY = ["train.max_iters=2", "train.save_every=2", "train.batch_size=2",
        "benchmark.scorers=[likelihood]", "benchmark.limit=4"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


def test_eval_only_then_finetune_then_a_benchmark_change(tiny_model_dir, shared_cache, tmp_path,
                                                         caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["experiment=demo", f"cache_dir={shared_cache}", f"output_root={tmp_path / 'out'}",
            f"tracking.uri={uri}", *TINY]

    def run(*extra: str):
        overrides = [*base, *extra]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vlmtune"):
            result = run_pipeline(validate(compose_recipe(overrides)), overrides=extra)
        return result, [r.getMessage() for r in caplog.records
                        if r.getMessage().startswith("stage ")]

    # 1. base only
    first, log = run("pipeline=eval_only")
    assert first.ran == ["ingest", "evaluate"]
    assert log == ["stage ingest: no previous run", "stage evaluate: no previous run"]
    assert not (first.run_dir / "eval" / "tuned").exists()

    # 2. the default pipeline, same overrides otherwise: same run directory, trains, and
    #    evaluates again because a tuned model is now part of the pipeline
    second, log = run()
    assert second.run_dir == first.run_dir and second.mlflow_run_id == first.mlflow_run_id
    assert second.skipped == ["ingest"]
    assert second.ran == ["train", "convert", "evaluate", "register"]
    assert log[:3] == ["stage ingest: inputs unchanged since it finished in "
                       f"{first.run_dir}, skipping",
                       "stage train: no previous run", "stage convert: no previous run"]
    assert log[3].startswith("stage evaluate: inputs changed (")
    assert "pipeline.evaluates_tuned" in log[3] and log[3].endswith(") — running")
    tuned = json.loads((first.run_dir / f"eval/tuned/{BENCH}/metrics.json").read_text())
    assert tuned["likelihood"]["n"] == 4
    run_info = MlflowClient(uri).get_run(second.mlflow_run_id)
    assert run_info.data.metrics[f"eval/{BENCH}/accuracy"] == tuned["likelihood"]["accuracy"]
    # named by the first command line: experiment, its overrides, the run key's start
    assert run_info.info.run_name == f"demo pipeline=eval_only · {first.run_key[:6]}"

    # 3. only the benchmark changes: same run directory, no retraining, evaluate reruns
    checkpoint = first.run_dir / "checkpoints/iter_2/trainable.safetensors"
    merged = first.run_dir / "merged/model.safetensors"
    stamps = checkpoint.stat().st_mtime_ns, merged.stat().st_mtime_ns
    third, log = run("benchmark.limit=3")
    assert third.run_dir == first.run_dir
    assert third.skipped == ["ingest", "train", "convert"]
    assert third.ran == ["evaluate", "register"]  # register gates on the new scores
    assert log[-2] == "stage evaluate: inputs changed (benchmark.limit) — running"
    assert (checkpoint.stat().st_mtime_ns, merged.stat().st_mtime_ns) == stamps
    for label in ("base", "tuned"):
        metrics = json.loads((first.run_dir / f"eval/{label}/{BENCH}/metrics.json").read_text())
        assert metrics["likelihood"]["n"] == 3

    # 4. nothing changed: nothing runs; the run's own log holds every run's stage lines
    fourth, _ = run("benchmark.limit=3")
    assert fourth.ran == []
    text = (first.run_dir / "logs" / "vlmtune.log").read_text()
    assert text.count("stage evaluate: ") == 4
    assert "stage evaluate: inputs changed (benchmark.limit) — running" in text
    state = json.loads((first.run_dir / "pipeline_state.json").read_text())
    assert state["stages"]["evaluate"]["inputs"]["benchmark.limit"] == 3
    assert state["stages"]["train"]["inputs"]["files.data/train.jsonl"] != "missing"

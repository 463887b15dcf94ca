"""Evaluation for any dataset: the README's "Your own data" command on open-ended conversations
completes, and the open-ended metrics are read back from a real sqlite MLflow store."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from vlmtune.config import compose_recipe, validate
from vlmtune.errors import ConfigError
from vlmtune.pipelines.runner import run_pipeline

BENCH = "foodie_synth_sivqa"  # the demo's benchmark card, here on open-ended data
FAST = ["dataset=llava_example", "train.max_iters=2", "train.save_every=2",
        "benchmark.limit=4", "benchmark.max_new_tokens=6"]


def test_llava_example_completes_with_open_ended_metrics(demo_overrides, tmp_path):
    recipe = validate(compose_recipe([*demo_overrides, *FAST]))
    result = run_pipeline(recipe)
    assert result.ran == ["ingest", "train", "convert", "evaluate", "register"]
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    heldout = (result.run_dir / "data/heldout.jsonl").read_text().splitlines()
    n = min(4, len(heldout))
    for prefix in ("eval", "eval_base"):
        m = run.data.metrics
        assert 0.0 <= m[f"{prefix}/{BENCH}/exact_match"] <= 1.0
        assert 0.0 <= m[f"{prefix}/{BENCH}/token_f1"] <= 1.0
        assert m[f"{prefix}/{BENCH}/n"] == n
        assert f"{prefix}/{BENCH}/accuracy" not in m  # no multiple-choice number on this data
        # loss = summed assistant-token NLL / their count over all items; perplexity = exp(loss)
        label = "tuned" if prefix == "eval" else "base"
        rows = [json.loads(line) for line in (result.run_dir / f"eval/{label}/{BENCH}/"
                                              "predictions.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["scorer"] == "likelihood"]
        loss = sum(r["nll"] for r in rows) / sum(r["tokens"] for r in rows)
        assert math.isclose(m[f"{prefix}/{BENCH}/loss"], loss, rel_tol=1e-6)
        assert math.isclose(m[f"{prefix}/{BENCH}/perplexity"], math.exp(loss), rel_tol=1e-6)
    # two steps on the same kind of conversations lower the held-out loss
    assert run.data.metrics[f"eval/{BENCH}/loss"] < run.data.metrics[f"eval_base/{BENCH}/loss"]
    metrics = json.loads((result.run_dir / f"eval/tuned/{BENCH}/metrics.json").read_text())
    assert metrics["kind"] == "open_ended"
    assert metrics["primary"] == {"name": "generate/token_f1",
                                  "value": metrics["generate"]["token_f1"], "n": n}
    report = (result.run_dir / "report.md").read_text()
    assert "## sample generations" in report
    first = json.loads(heldout[0])
    assert f"reference: {first['conversations'][-1]['value']}" in report
    assert "| token_f1 |" in report and "★ primary" in report


def test_multiple_choice_benchmark_on_open_data_is_refused_before_work(demo_overrides, tmp_path):
    from vlmtune.pipelines.preflight import preflight

    recipe = validate(compose_recipe([*demo_overrides, *FAST, "benchmark.kind=multiple_choice"]))
    with pytest.raises(ConfigError, match=r"benchmark\.kind=multiple_choice.*foodie_synth_sivqa"):
        preflight(recipe, ["ingest", "train", "convert", "evaluate"])
    assert not (tmp_path / "outputs").exists()

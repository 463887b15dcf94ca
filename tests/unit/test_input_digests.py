"""What each stage's digest covers: its own sections and upstream files, nothing else."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vlmtune.config import compose_recipe, validate
from vlmtune.pipelines.inputs import changed_keys, digest, stage_inputs
from vlmtune.pipelines.state import PipelineState


def _ctx(tmp_path, *overrides: str):
    recipe = validate(compose_recipe(["experiment=demo", f"cache_dir={tmp_path}", *overrides]))
    return SimpleNamespace(recipe=recipe, run_dir=tmp_path / "run", data_fingerprint="fp",
                           model_identity={"path": "/m", "built_by": "vlmtune"})


@pytest.mark.parametrize(("override", "affected"), [
    ("benchmark.limit=3", {"evaluate"}),
    ("train.num_workers=2", set()),
    ("pipeline=eval_only", {"evaluate"}),  # no tuned model to evaluate any more
    ("tracking=disabled", set()),
    ("method.lora.r=8", {"train"}),
    ("model.system_prompt=hi", {"train", "convert", "evaluate"}),
    ("dataset.split_seed=1", {"ingest"}),
])
def test_a_setting_changes_the_digest_of_exactly_the_stages_that_read_it(tmp_path, override,
                                                                         affected):
    before, after = _ctx(tmp_path), _ctx(tmp_path, override)
    changed = {stage for stage in ("ingest", "train", "convert", "evaluate")
               if digest(stage_inputs(before, stage)) != digest(stage_inputs(after, stage))}
    assert changed == affected


def test_rewritten_upstream_files_reach_every_later_stage(tmp_path):
    ctx = _ctx(tmp_path)
    (ctx.run_dir / "adapter").mkdir(parents=True)
    (ctx.run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"a")
    before = {s: stage_inputs(ctx, s) for s in ("train", "convert", "evaluate")}
    (ctx.run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"b")  # retrained
    after = {s: stage_inputs(ctx, s) for s in ("train", "convert", "evaluate")}
    assert changed_keys(before["train"], after["train"]) == []
    assert changed_keys(before["convert"], after["convert"]) == ["files.adapter/"]
    assert changed_keys(before["evaluate"], after["evaluate"]) == ["files.adapter/"]


def test_the_reason_a_stage_runs(tmp_path):
    state = PipelineState(tmp_path / "pipeline_state.json", "k")
    inputs = {"benchmark.limit": 4, "benchmark.name": "b"}
    assert state.reason_to_run("evaluate", inputs) == "no previous run"
    state.mark_started("evaluate", inputs)
    state.mark("evaluate", "interrupted")
    assert state.reason_to_run("evaluate", inputs) == "interrupted — resuming"
    assert not state.inputs_changed("evaluate", inputs)
    # interrupted, then asked for with another limit: a change, not a resume
    assert state.reason_to_run("evaluate", {**inputs, "benchmark.limit": 3}) == \
        "inputs changed (benchmark.limit) — running"
    state.mark_done("evaluate")
    assert state.reason_to_run("evaluate", inputs) is None
    assert state.reason_to_run("evaluate", {**inputs, "benchmark.limit": 3}) == \
        "inputs changed (benchmark.limit) — running"
    reloaded = PipelineState.load(tmp_path, "k")
    assert reloaded.reason_to_run("evaluate", dict(inputs)) is None
    assert reloaded.inputs_changed("evaluate", {**inputs, "benchmark.name": "c"})

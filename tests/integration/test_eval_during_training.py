"""train.eval_every logs eval/<benchmark>/accuracy at the expected steps without changing the
training; train.keep_best keeps the best-scoring checkpoint and the train stage's output is it."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from vlmtune.config import compose_recipe, validate
from vlmtune.errors import ConfigError
from vlmtune.pipelines.runner import run_pipeline
from vlmtune.training.eval_during import EvalEvery, load_best

BENCH = "foodie_synth_sivqa"
METRIC = f"eval/{BENCH}/accuracy"
TINY = ["train.max_iters=6", "train.save_every=2", "train.batch_size=2", "train.lr=2e-1",
        "method.lora.dropout=0.1", "benchmark.scorers=[likelihood]", "benchmark.batch_size=4",
        "device=cpu"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.grad_accum=2", "train.max_iters=6", "train.save_every=2", "train.eval_every=3"],
     "train.eval_every=3 must be a positive multiple of train.grad_accum=2"),
    (["train.eval_every=0"], "train.eval_every=0 must be a positive multiple"),
    (["train.eval_every=2", "train.eval_items=0"], "train.eval_items"),
    (["train.keep_best=true"], "train.keep_best=true needs train.eval_every"),
])
def test_eval_settings_are_validated_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_recipe(["experiment=demo", *overrides]))


def test_keep_best_keeps_the_best_step_not_the_last(tmp_path):
    """Scripted scores 0.25, 0.75, 0.75, 0.5 at steps 2, 4, 6, 8: best/ holds step 4's
    weights (a tie does not replace it); every step is forwarded, scores added on theirs."""
    model = torch.nn.Linear(2, 1)
    scores = iter([0.25, 0.75, 0.75, 0.5])
    seen: list[tuple[int, dict]] = []
    modes = []

    def evaluate() -> float:
        modes.append(model.training)
        return next(scores)

    hook = EvalEvery(lambda step, m: seen.append((step, m)), evaluate, every=2,
                     name="eval/b/accuracy", model=model, best_root=tmp_path)
    weights = {}
    model.train()
    for step in range(1, 9):
        with torch.no_grad():
            model.weight.fill_(float(step))
        weights[step] = model.weight.clone()
        hook(step, {"train/loss": 1.0 / step})
    assert modes == [False] * 4 and model.training  # scored in eval mode, restored after
    assert [s for s, _ in seen] == list(range(1, 9))
    assert [m.get("eval/b/accuracy") for _, m in seen] == [None, 0.25, None, 0.75, None, 0.75,
                                                           None, 0.5]
    assert (tmp_path / "best" / "COMPLETED").exists()
    assert json.loads((tmp_path / "best" / "meta.json").read_text()) == {
        "iteration": 4, "metric": "eval/b/accuracy", "value": 0.75}
    fresh = torch.nn.Linear(2, 1)
    assert load_best(fresh, tmp_path)["iteration"] == 4
    assert torch.equal(fresh.weight, weights[4])
    # a resumed run knows the best so far: a lower score does not replace it
    again = EvalEvery(lambda *_: None, lambda: 0.5, every=2, name="eval/b/accuracy",
                      model=model, best_root=tmp_path)
    again(10, {})
    assert json.loads((tmp_path / "best" / "meta.json").read_text())["iteration"] == 4


def test_eval_every_logs_accuracy_and_keep_best_gives_the_adapter(tiny_model_dir, shared_cache,
                                                                  tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def train(name: str, *extra: str):
        overrides = ["experiment=demo", f"cache_dir={shared_cache}",
                     f"output_root={tmp_path / name}", f"tracking.uri={uri}", *TINY, *extra]
        return run_pipeline(validate(compose_recipe(overrides)), ["ingest", "train"],
                            overrides=list(extra))

    evaluated = train("eval", "train.eval_every=2", "train.eval_items=6", "train.keep_best=true")
    plain = train("plain")
    client = MlflowClient(uri)
    history = client.get_metric_history(evaluated.mlflow_run_id, METRIC)
    steps = {m.step: m.value for m in history}
    assert sorted(steps) == [2, 4, 6]
    assert all(v in {k / 6 for k in range(7)} for v in steps.values())  # of 6 items

    def losses(run_id):
        return [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]

    # evaluation leaves the training as it was (dropout on: the random state is restored)
    assert losses(evaluated.mlflow_run_id) == losses(plain.mlflow_run_id)
    assert METRIC not in client.get_run(plain.mlflow_run_id).data.metrics

    ckpts = evaluated.run_dir / "checkpoints"
    meta = json.loads((ckpts / "best" / "meta.json").read_text())
    best_step = min(s for s, v in steps.items() if v == max(steps.values()))
    assert best_step < 6  # this setting's accuracies peak before the last step (a tie at 6)
    assert meta["iteration"] == best_step and meta["value"] == pytest.approx(steps[best_step])
    # the adapter is the best checkpoint's weights (peft's saved names), not the last's
    best = load_file(ckpts / "best" / "trainable.safetensors")
    last = load_file(ckpts / "iter_6" / "trainable.safetensors")
    adapter = load_file(evaluated.run_dir / "adapter" / "adapter_model.safetensors")
    saved_name = {k: k.replace("modules_to_save.default.", "").replace(".default.", ".")
                  for k in best}
    assert sorted(saved_name.values()) == sorted(adapter)
    for key, name in saved_name.items():
        assert torch.equal(adapter[name], best[key].to(adapter[name].dtype)), key
    assert any(not torch.equal(best[k], last[k]) for k in best) == (best_step != 6)

"""train.eval_every logs eval/<benchmark>/accuracy at the expected steps without changing the
training; train.keep_best keeps the best-scoring checkpoint and the train stage's output is it."""

from __future__ import annotations

import contextlib
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


class _DropoutLM(torch.nn.Module):
    """Embedding → dropout → linear next-token model: its losses depend on the torch RNG."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = torch.nn.Embedding(30, 8)
        self.drop = torch.nn.Dropout(0.3)
        self.head = torch.nn.Linear(8, 30)

    def forward(self, input_ids, attention_mask, labels):
        logits = self.head(self.drop(self.embed(input_ids)))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                                 labels[:, 1:].flatten())
        return type("Out", (), {"loss": loss})


def test_a_run_with_evaluation_resumes_exactly(tmp_path):
    """Interrupted after step 6 (checkpoint at 4) and resumed: the same losses, scores and best
    checkpoint as an uninterrupted run; the scorer itself draws random numbers and runs the
    model, and neither disturbs training."""
    from vlmtune.config.schema import TrainConfig
    from vlmtune.training.engine import train

    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(0, 30, (int(n),), generator=g)
            for n in torch.randint(4, 12, (24,), generator=g)]
    probe = torch.randint(0, 30, (2, 6), generator=g)

    def collate(batch):
        width = max(len(r) for r in batch)
        ids = torch.stack([torch.cat([r, r.new_zeros(width - len(r))]) for r in batch])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    cfg = TrainConfig(lr=5e-2, batch_size=3, max_iters=8, save_every=4, keep_last_n=2,
                      eval_every=2, keep_best=True, warmup_ratio=0.0)

    class Stop(Exception):
        pass

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, index: int) -> torch.Tensor:
            return rows[index]

    def run(root, stop_at=None, every=2):
        model, log = _DropoutLM(), {}

        def evaluate() -> float:
            torch.rand(5)  # a scorer may draw random numbers: training must not see them
            return -float(model(probe, None, probe).loss)

        def record(step, metrics):
            log[step] = {k: v for k, v in metrics.items() if k != "train/tokens_per_s"}
            if step == stop_at:
                raise Stop

        hook = EvalEvery(record, evaluate, every=every, name="eval/b/accuracy", model=model,
                         best_root=root / "checkpoints")
        with contextlib.suppress(Stop):
            train(model, dataset=Rows(), collate_fn=collate,
                  param_groups=[{"params": list(model.parameters())}], cfg=cfg,
                  work_dir=root / "logs", checkpoint_dir=root / "checkpoints", on_step=hook)
        return model, log

    _, whole = run(tmp_path / "whole")
    _, first = run(tmp_path / "cut", stop_at=6)
    model, resumed = run(tmp_path / "cut")
    assert sorted(first) == [1, 2, 3, 4, 5, 6] and sorted(resumed) == [5, 6, 7, 8]
    assert {**first, **resumed} == whole  # losses, lr and scores of every step
    assert sorted(s for s, m in whole.items() if "eval/b/accuracy" in m) == [2, 4, 6, 8]
    _, plain = run(tmp_path / "plain", every=100)  # never evaluates: the same losses
    assert {s: m["train/loss"] for s, m in plain.items()} == \
        {s: m["train/loss"] for s, m in whole.items()}
    meta = json.loads((tmp_path / "cut/checkpoints/best/meta.json").read_text())
    assert meta == json.loads((tmp_path / "whole/checkpoints/best/meta.json").read_text())
    scores = {s: m["eval/b/accuracy"] for s, m in whole.items() if "eval/b/accuracy" in m}
    assert meta["iteration"] == min(s for s, v in scores.items() if v == max(scores.values()))

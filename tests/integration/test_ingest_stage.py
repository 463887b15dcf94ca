"""The ingest stage through the real seams: Hydra cards, the runner, MLflow (sqlite), the CLI,
the tiny model's tokenizer, and the licence gate of the training stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vlmtune.config import compose_recipe, project_root, validate
from vlmtune.data.collate import ConversationDataset
from vlmtune.data.synthetic import generate_foodie_synth
from vlmtune.data.templates import get_template
from vlmtune.errors import ConfigError
from vlmtune.models.loading import load_model
from vlmtune.pipelines.runner import run_pipeline

TINY_TRAIN = ["train.max_iters=4", "train.save_every=2", "train.batch_size=2"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLMTUNE_PROGRESS", "0")


def test_foodieqa_card_gates_training_and_records_lineage(shared_cache, tmp_path):
    root = generate_foodie_synth(tmp_path / "FoodieQA", seed=3, num_dishes=5, photos_per_dish=3)
    (root / "images/jiaozi/0.jpg").unlink()  # its 3 questions are dropped
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["dataset=foodieqa", f"dataset.root={root}", f"cache_dir={shared_cache}",
            f"output_root={tmp_path / 'outputs'}", f"tracking.uri={uri}", *TINY_TRAIN]

    refused = validate(compose_recipe(base))
    with pytest.raises(ConfigError) as info:
        run_pipeline(refused, ["ingest", "train"])
    message = str(info.value)
    assert "licensed CC-BY-NC-ND-4.0 and published for evaluation" in message
    assert "dataset.acknowledge_license=true" in message

    recipe = validate(compose_recipe([*base, "dataset.acknowledge_license=true"]))
    result = run_pipeline(recipe, ["ingest", "train"])
    assert result.ran == ["ingest", "train"]
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    manifest = json.loads((result.run_dir / "data/manifest.json").read_text())
    assert (manifest["license"], manifest["usage"]) == ("CC-BY-NC-ND-4.0", "evaluation")
    assert manifest["card"]["name"] == "foodieqa" and manifest["adapter"] == "foodieqa"
    assert manifest["counts"]["read"] == 45 and manifest["drops"] == {"missing_image": 3}
    rejected = (result.run_dir / "data/rejected.jsonl").read_text().splitlines()
    assert len(rejected) == 3
    assert all(json.loads(r)["reason"] == "missing_image" for r in rejected)

    run = MlflowClient(uri).get_run(result.mlflow_run_id)
    assert run.data.tags["vlmtune.data_fingerprint"] == manifest["fingerprint"]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"foodieqa-train", "foodieqa-heldout"}
    train_input = inputs["foodieqa-train"]
    assert train_input.dataset.digest == manifest["fingerprint"][:36]
    profile = json.loads(train_input.dataset.profile)
    assert profile["records"] == manifest["counts"]["train"]
    assert (profile["license"], profile["usage"]) == ("CC-BY-NC-ND-4.0", "evaluation")
    assert {t.key: t.value for t in train_input.tags}["mlflow.data.context"] == "train"
    assert run.data.metrics["data/dropped/missing_image"] == 3
    assert run.data.metrics["data/heldout"] == manifest["counts"]["heldout"]
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id, "data")}
    assert artifacts == {"data/manifest.json", "data/rejected.jsonl"}


@pytest.mark.parametrize(("card", "read", "heldout"), [
    ("llava_example", 12, None), ("sharegpt_example", 6, None),
    ("hf_example", 6, ["hf-4", "hf-5"]), ("csv_example", 6, ["csv-4", "csv-5"])])
def test_bundled_sample_cards_ingest(card, read, heldout, tmp_path):
    recipe = validate(compose_recipe([f"dataset={card}", "tracking=disabled",
                                      f"cache_dir={tmp_path / 'cache'}",
                                      f"output_root={tmp_path / 'outputs'}"]))
    result = run_pipeline(recipe, ["ingest"])
    data = result.run_dir / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["read"], counts["kept"], counts["dropped"]) == (read, read, 0)
    assert counts["train"] and counts["heldout"]
    assert manifest["image_root"] == str(project_root() / "datasets/samples" / card)
    held = [json.loads(line)["id"] for line in (data / "heldout.jsonl").read_text().splitlines()]
    if heldout is not None:
        assert held == heldout
    for line in (data / "train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert (Path(manifest["image_root"]) / rec["image"]).is_file()
        assert rec["conversations"][0]["value"].count("<image>") == 1


def test_cli_ingest_prints_the_summary_and_hits_the_cache(tmp_path):
    root = tmp_path / "mine"
    shutil.copytree(project_root() / "datasets/samples/llava_example", root)
    with (root / "data.jsonl").open("a") as f:
        f.write('{"id": "broken", "image": "images/none.png", "conversations": []}\n')
    overrides = ["dataset=llava_example", f"dataset.root={root}", f"cache_dir={tmp_path / 'c'}",
                 f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    first = run_pipeline(validate(compose_recipe([*overrides, f"output_root={tmp_path / 'a'}"])),
                         ["ingest"]).run_dir / "data"
    env = {**os.environ, "VLMTUNE_PROGRESS": "0", "COLUMNS": "120"}
    out = subprocess.run([sys.executable, "-m", "vlmtune.cli", "ingest", *overrides,
                          f"output_root={tmp_path / 'b'}"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "cache hit" in out.stdout  # a second output root: the stage runs, from the cache
    assert "ingest: llava_example (adapter llava)" in out.stdout
    table = out.stdout[out.stdout.index("ingest: llava_example"):]
    for row in ("read", "kept", "train", "held-out", "dropped", "bad_record"):
        assert row in table
    assert "rejected records:" in table and "rejected.jsonl" in table
    second = next((tmp_path / "b").glob("vlmtune/*/data"))
    for name in ("train.jsonl", "heldout.jsonl", "manifest.json", "rejected.jsonl"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_max_tokens_is_measured_as_training_encodes(tiny_model_dir, shared_cache, tmp_path):
    model_dir, _ = tiny_model_dir
    base = ["experiment=demo", "tracking=disabled", f"cache_dir={shared_cache}"]

    def ingest(*extra: str) -> Path:
        recipe = validate(compose_recipe([*base, f"output_root={tmp_path / str(len(extra))}",
                                          *extra]))
        return run_pipeline(recipe, ["ingest"]).run_dir / "data"

    recipe = validate(compose_recipe(base))
    loaded = load_model(model_dir, recipe.model)
    everything = ingest()
    image_root = Path(json.loads((everything / "manifest.json").read_text())["image_root"])
    lengths = {}
    for split in ("train", "heldout"):
        ds = ConversationDataset(everything / f"{split}.jsonl", image_root, loaded.tokenizer,
                                 loaded.images, template=get_template("internlm2"),
                                 system=recipe.model.system_prompt, max_length=100_000)
        lengths |= {r.id: len(ds[i]["input_ids"]) for i, r in enumerate(ds.records)}
    limit = sorted(lengths.values())[len(lengths) // 2]
    limited = ingest(f"dataset.max_tokens={limit}")
    manifest = json.loads((limited / "manifest.json").read_text())
    kept = {json.loads(line)["id"] for s in ("train", "heldout")
            for line in (limited / f"{s}.jsonl").read_text().splitlines()}
    assert kept == {rid for rid, n in lengths.items() if n <= limit}
    assert manifest["drops"] == {"too_long": len(lengths) - len(kept)} and kept
    assert manifest["token_check"]["status"] == "checked"

    missing = ingest("dataset.max_tokens=10", f"model.path={tmp_path / 'not-built'}")
    manifest = json.loads((missing / "manifest.json").read_text())
    assert manifest["token_check"]["status"].startswith("skipped: no model in model.path")
    assert manifest["drops"] == {}

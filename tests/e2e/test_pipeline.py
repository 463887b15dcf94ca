"""The whole pipeline on the tiny model: killed during training, resumed, then skipped.

One run of the demo recipe covers the acceptance of the foundation: exact run-directory
contents, accuracy improvement read back from the MLflow store, resume after SIGTERM from the
last completed checkpoint, KILLED status of the interrupted attempt, and skipping on re-run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from vlmtune.config import compose_recipe, validate
from vlmtune.pipelines.runner import run_pipeline

BENCH = "foodie_synth_sivqa"
MMBENCH = "mmbench_synth"  # the demo's second benchmark: a bundled MMBench-format TSV
MMBENCH_TSV = Path(__file__).parents[2] / "datasets/samples/mmbench_synth/mmbench_synth.tsv"
ITER_FILES = ["COMPLETED", "meta.json", "optimizer.pt", "rng.pt", "scheduler.pt",
              "trainable.safetensors"]


def expected_files(max_iters: int, save_every: int, keep: int) -> set[str]:
    saved = list(range(save_every, max_iters + 1, save_every))[-keep:]
    files = {"config.yaml", "pipeline_state.json", "report.md", "run.lock", "registry.json",
             "data/train.jsonl", "data/heldout.jsonl", "data/manifest.json",
             "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
             "adapter/README.md",
             "merged/config.json", "merged/generation_config.json", "merged/model.safetensors",
             "merged/tokenizer.json", "merged/tokenizer_config.json",
             "merged/chat_template.jinja", "merged/preprocessor_config.json",
             "merged/processor_config.json"}
    files |= {f"checkpoints/iter_{n}/{f}" for n in saved for f in ITER_FILES}
    files |= {f"eval/{label}/{bench}/{f}" for label in ("base", "tuned")
              for bench in (BENCH, MMBENCH) for f in ("predictions.jsonl", "metrics.json")}
    files |= {f"plots/{name}.png" for name in ("loss", "lr", "benchmarks", f"categories_{BENCH}",
                                                f"confusion_{BENCH}", f"categories_{MMBENCH}")}
    return files


def mmbench_images() -> int:
    """Distinct images of the TSV: cells of more than 64 characters (base64); shorter ones name
    the row whose image they reuse (VLMEvalKit's convention)."""
    rows = list(csv.DictReader(MMBENCH_TSV.open(encoding="utf-8"), delimiter="\t"))
    return len({r["image"] for r in rows if len(r["image"]) > 64})


def run_files(run_dir: Path) -> set[str]:
    """Every file of the run directory except the training engine's own logs/."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
            if p.is_file() and p.relative_to(run_dir).parts[0] != "logs"}


def start_and_kill_during_training(overrides: list[str], output_root: Path) -> int:
    """Run the CLI in a subprocess; SIGTERM it once the first checkpoint is complete."""
    env = {**os.environ, "VLMTUNE_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "vlmtune.cli", "run", *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 900
    while not list(output_root.glob("demo/*/checkpoints/iter_*/COMPLETED")):
        assert proc.poll() is None, f"pipeline exited early:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 900 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert "interrupted" in out, out
    return proc.returncode


def test_demo_pipeline_kill_resume_skip(demo_overrides, tmp_path, caplog):
    output_root, uri = tmp_path / "outputs", f"sqlite:///{tmp_path / 'mlflow.db'}"

    # 1. killed during training: the MLflow run is KILLED, not left RUNNING
    assert start_and_kill_during_training(demo_overrides, output_root) == 130
    (run_dir,) = output_root.glob("demo/*")
    state = json.loads((run_dir / "pipeline_state.json").read_text())
    assert state["stages"]["ingest"]["status"] == "done"
    assert state["stages"]["train"]["status"] == "interrupted"
    client = MlflowClient(uri)
    assert client.get_run(state["mlflow_run_id"]).info.status == "KILLED"

    # 2. the same command again: ingest skipped, training resumes from the last checkpoint
    recipe = validate(compose_recipe(demo_overrides))
    with caplog.at_level(logging.INFO, logger="vlmtune"):
        result = run_pipeline(recipe)
    assert result.run_dir == run_dir
    assert result.skipped == ["ingest"]
    assert result.ran == ["train", "convert", "evaluate", "register"]
    resumed = [r.getMessage() for r in caplog.records if "resumed from" in r.getMessage()]
    assert resumed and "iter_" in resumed[0], caplog.text

    # 3. exactly the promised files
    train = recipe.train
    files, expected = run_files(run_dir), expected_files(train.max_iters, train.save_every,
                                                         train.keep_last_n)
    decoded = {f for f in files if f.startswith(f"benchmarks/{MMBENCH}/")}
    assert len(decoded) == mmbench_images() and all(f.endswith(".img") for f in decoded)
    files -= decoded
    assert files == expected, (sorted(files - expected), sorted(expected - files))
    assert (run_dir / "logs").is_dir()

    # 4. the MLflow run (reopened, same id) as read back from its store
    run = client.get_run(result.mlflow_run_id)
    assert result.mlflow_run_id == state["mlflow_run_id"]
    assert run.info.status == "FINISHED"
    assert run.data.params["method.lora.r"] == str(recipe.method.lora.r)
    assert run.data.params["train.lr"] == str(recipe.train.lr)
    manifest = json.loads((run_dir / "data/manifest.json").read_text())
    assert run.data.tags["vlmtune.run_key"] == run_dir.name
    assert run.data.tags["vlmtune.data_fingerprint"] == manifest["fingerprint"]
    losses = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert set(losses) == set(range(1, train.max_iters + 1))
    assert sum(list(losses.values())[-20:]) / 20 < sum(list(losses.values())[:20]) / 20
    base = run.data.metrics[f"eval_base/{BENCH}/accuracy"]
    tuned = run.data.metrics[f"eval/{BENCH}/accuracy"]
    assert base <= 0.40 and tuned >= 0.80, (base, tuned)
    metrics = json.loads((run_dir / f"eval/tuned/{BENCH}/metrics.json").read_text())
    assert metrics["likelihood"]["accuracy"] == tuned
    assert metrics["likelihood"]["n"] == manifest["counts"]["heldout"]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"foodie_synth-train", "foodie_synth-heldout"}
    assert inputs["foodie_synth-train"].dataset.digest == manifest["fingerprint"][:36]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "report.md", "data", "eval"} <= artifacts
    assert "| foodie_synth_sivqa | likelihood |" in (run_dir / "report.md").read_text()

    # 5. and once more: every stage skipped, nothing rewritten
    before = (run_dir / "merged/model.safetensors").stat().st_mtime_ns
    again = run_pipeline(recipe)
    assert again.ran == [] and again.skipped == ["ingest", "train", "convert", "evaluate",
                                                 "register"]
    assert (run_dir / "merged/model.safetensors").stat().st_mtime_ns == before

"""The pipeline with two benchmarks: the held-out split and an MMBench TSV (written here in
VLMEvalKit's format), each logged under its own name into a real sqlite MLflow store."""

from __future__ import annotations

import base64
import csv
import io
import json

from mlflow.tracking import MlflowClient
from PIL import Image

from vlmtune.config import compose_recipe, run_key, validate
from vlmtune.pipelines.runner import run_pipeline

FAST = ["train.max_iters=4", "train.save_every=4", "benchmark.limit=3",
        "benchmark.scorers=[likelihood]"]
ANSWER_LINE = "Answer with the option's letter from the given choices directly."


def _tsv(path):
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    rows = [["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category",
             "l2-category", "split"],
            [0, image, "What colour is it?", "nan", "red", "green", "blue", "grey", "A",
             "colour", "perception", "dev"],
            [1, "0", "Is it a photo?", "A flat square.", "yes", "no", "", "", "B",
             "kind", "reasoning", "dev"]]
    with path.open("w", newline="") as fh:
        csv.writer(fh, delimiter="\t", lineterminator="\n").writerows(rows)
    return path


def test_heldout_and_mmbench_both_logged(demo_overrides, tmp_path):
    tsv = _tsv(tmp_path / "MMBench_DEV_EN.tsv")
    recipe = validate(compose_recipe([*demo_overrides, *FAST, "benchmarks=[heldout,mmbench]",
                                      f"benchmark_paths.mmbench={tsv}",
                                      "tracking.uri=sqlite:///" + str(tmp_path / "ml.db")]))
    result = run_pipeline(recipe)
    run = MlflowClient(f"sqlite:///{tmp_path / 'ml.db'}").get_run(result.mlflow_run_id)
    logged = run.data.metrics
    for prefix in ("eval", "eval_base"):
        assert f"{prefix}/foodie_synth_sivqa/accuracy" in logged
        assert f"{prefix}/foodie_synth_sivqa/likelihood/accuracy_mean" in logged
        for metric in ("circular_accuracy", "vanilla_accuracy"):
            assert 0.0 <= logged[f"{prefix}/mmbench/{metric}"] <= 1.0
        assert logged[f"{prefix}/mmbench/n"] == 2  # questions, not rows
    # the benchmarks are evaluation-only: the run key is the one without them
    plain = validate(compose_recipe([*demo_overrides, *FAST, "benchmarks=[heldout]"]))
    assert run_key(plain, "fp") == run_key(recipe, "fp")
    out = result.run_dir / "eval/tuned/mmbench"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["primary"]["name"] == "generate/circular_accuracy"
    assert metrics["benchmark"]["digest"].startswith("sha256:")
    assert metrics["generate"]["rows"] == 6  # 4 + 2 generated rotations
    assert set(metrics["generate"]["per_category"]) == {"colour", "kind"}
    assert set(metrics["generate"]["per_l2_category"]) == {"perception", "reasoning"}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in rows) == [0, 1, 1_000_000, 1_000_001, 2_000_000,
                                                3_000_000]
    first = next(r for r in rows if r["index"] == 1)
    assert first["prompt"] == ("<image>\nA flat square.\nIs it a photo?\nA. yes\nB. no\n"
                               + ANSWER_LINE)
    for row in rows:
        assert {"id", "prompt", "output", "parsed", "unparsed", "correct"} <= set(row)
        assert row["unparsed"] == (row["parsed"] is None)
    held = json.loads((result.run_dir / "eval/base/foodie_synth_sivqa/metrics.json").read_text())
    assert held["primary"]["n"] == 3 and "accuracy_sum" in held["likelihood"]
    report = (result.run_dir / "report.md").read_text()
    assert "| mmbench | generate | circular_accuracy |" in report

"""plots/: which PNGs a run directory gets, the numbers behind them, report.md's links."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from vlmtune.evaluation.curves import StepLog, read_curves
from vlmtune.evaluation.plots import (
    category_scores,
    confusion_counts,
    plot_confusion,
    plots_section,
    write_plots,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _mc_row(scorer: str, qtype: str, answer: str, pred: str | None) -> dict:
    # the row multiple_choice.py writes (likelihood rows also carry scores)
    return {"scorer": scorer, "id": f"q{answer}{pred}", "question_type": qtype, "answer": answer,
            "pred": pred, "correct": pred == answer}


def _mc_metrics(acc: float) -> dict:
    entry = {"n": 4, "accuracy": acc, "unparsed": 0, "per_type": {}, "chance": 0.25}
    return {"kind": "multiple_choice", "primary": {"name": "likelihood/accuracy", "value": acc,
                                                   "n": 4},
            "likelihood": entry, "generate": {**entry, "accuracy": 0.0}}


def _mc_run(run_dir: Path, with_steps: bool = True) -> None:
    if with_steps:
        log = StepLog(run_dir)
        for step in (1, 2, 3):
            log(step, {"train/loss": 3.0 - step * 0.5, "train/lr": 1e-3 * step})
    for label, preds in {"base": ["B", "B", "C", None], "tuned": ["A", "B", "C", "D"]}.items():
        out = run_dir / "eval" / label / "bench"
        rows = [_mc_row("likelihood", t, g, p)
                for t, g, p in zip(["x", "x", "y", "y"], "ABCD", preds, strict=True)]
        rows += [_mc_row("generate", "x", "A", None)]
        _jsonl(out / "predictions.jsonl", rows)
        (out / "metrics.json").write_text(json.dumps(_mc_metrics(0.5 if label == "base" else 1)))


def _assert_pngs(folder: Path, names: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == names
    for name in names:
        data = (folder / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
        with Image.open(folder / name) as img:
            assert img.format == "PNG" and img.width >= 400 and img.height >= 300


def test_multiple_choice_run_gets_curves_bars_categories_confusion(tmp_path):
    _mc_run(tmp_path)
    paths = write_plots(tmp_path)
    names = {"loss.png", "lr.png", "benchmarks.png", "categories_bench.png",
             "confusion_bench.png"}
    assert {p.name for p in paths} == names
    _assert_pngs(tmp_path / "plots", names)


def test_open_ended_run_gets_no_confusion_and_no_categories(tmp_path):
    StepLog(tmp_path)(1, {"train/loss": 2.0, "train/lr": 1e-4})
    for label in ("base", "tuned"):
        out = tmp_path / "eval" / label / "open"
        _jsonl(out / "predictions.jsonl", [  # the rows open_ended.py writes
            {"scorer": "likelihood", "id": "a", "nll": 4.0, "tokens": 2},
            {"scorer": "generate", "id": "a", "question": "q?", "reference": "red",
             "output": "red", "exact_match": True, "token_f1": 1.0}])
        (out / "metrics.json").write_text(json.dumps({
            "kind": "open_ended", "primary": {"name": "generate/token_f1", "value": 1.0, "n": 1},
            "likelihood": {"n": 1, "tokens": 2, "loss": 2.0, "perplexity": 7.39},
            "generate": {"n": 1, "exact_match": 1.0, "token_f1": 1.0, "unparsed": 0}}))
    write_plots(tmp_path)
    _assert_pngs(tmp_path / "plots", {"loss.png", "lr.png", "benchmarks.png"})


def test_eval_only_run_has_no_curves_and_stale_plots_go(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "loss.png").write_bytes(PNG)  # from an earlier evaluation
    _mc_run(tmp_path, with_steps=False)
    write_plots(tmp_path, {"base": ["bench"]})  # this evaluation scored only the base model
    _assert_pngs(tmp_path / "plots", {"benchmarks.png", "categories_bench.png",
                                      "confusion_bench.png"})


def test_no_data_no_plots(tmp_path):
    assert write_plots(tmp_path) == []
    assert plot_confusion({}, tmp_path / "c.png", title="t") is None
    assert not (tmp_path / "c.png").exists()


def test_confusion_counts_gold_by_chosen_with_unparsed_column():
    rows = [{"answer": "A", "pred": "A"}, {"answer": "A", "pred": "C"},
            {"answer": "B", "pred": None}, {"answer": "C", "pred": "C"},
            {"answer": "C", "parsed": "A", "pred": "C"}]  # parsed wins over pred
    gold, chosen, counts = confusion_counts(rows)
    assert gold == ["A", "B", "C"]
    assert chosen == ["A", "B", "C", "unparsed"]
    assert counts == [[1, 0, 1, 0],
                      [0, 0, 0, 1],
                      [1, 0, 1, 0]]


def test_category_scores_prefer_category_and_average_scores():
    rows = [{"category": "ocr", "question_type": "x", "correct": True},
            {"category": "ocr", "correct": False}, {"category": "count", "correct": 0.5}]
    assert category_scores(rows) == {"count": 0.5, "ocr": 0.5}
    assert category_scores([{"question_type": "region", "correct": True}]) == {"region": 1.0}
    assert category_scores([{"id": "a", "correct": True}]) == {}


def test_step_log_last_line_of_a_step_wins_and_cut_lines_are_skipped(tmp_path):
    log = StepLog(tmp_path)
    for step, loss in [(1, 3.0), (2, 2.0), (2, 1.5)]:  # step 2 trained again after a resume
        log(step, {"train/loss": loss})
    with (tmp_path / "logs/steps.jsonl").open("a") as f:
        f.write('{"step": 3, "train/lo')  # killed mid-write
    assert read_curves(tmp_path) == {"train/loss": [(1, 3.0), (2, 1.5)]}


def test_curves_fall_back_to_mmengine_scalars(tmp_path):
    _jsonl(tmp_path / "logs/20260101_000000/vis_data/scalars.json",
           [{"lr": 0.1, "base_lr": 0.1, "loss": 2.5, "time": 1.0, "iter": 5, "step": 5}])
    _jsonl(tmp_path / "logs/20260101_010000/vis_data/scalars.json",
           [{"lr": 0.05, "loss": 1.5, "iter": 10, "step": 10}])
    assert read_curves(tmp_path) == {"train/loss": [(5, 2.5), (10, 1.5)],
                                     "train/lr": [(5, 0.1), (10, 0.05)]}


def test_plots_section_links_each_file_relative_to_the_run(tmp_path):
    paths = [tmp_path / "plots" / "loss.png", tmp_path / "plots" / "confusion_bench.png"]
    text = plots_section(paths, tmp_path)
    assert re.findall(r"!\[[^\]]+\]\(([^)]+)\)", text) == ["plots/loss.png",
                                                           "plots/confusion_bench.png"]
    assert plots_section([], tmp_path) == ""

"""The closing table and report.md: n, chance, unparsed, base, tuned, Δ, and the primary mark."""

from __future__ import annotations

import json
from pathlib import Path

from vlmtune.evaluation.report import render_report
from vlmtune.pipelines.runner import PipelineResult
from vlmtune.summary import print_summary

MC = {  # metrics.json of a 4-option benchmark, 8 items, as evaluate writes it
    "base": {"kind": "multiple_choice", "primary": {"name": "likelihood/accuracy",
                                                     "value": 0.25, "n": 8},
             "likelihood": {"n": 8, "accuracy": 0.25, "unparsed": 0, "chance": 0.25,
                            "per_type": {}},
             "generate": {"n": 8, "accuracy": 0.125, "unparsed": 5, "chance": 0.25,
                          "per_type": {}}},
    "tuned": {"kind": "multiple_choice", "primary": {"name": "likelihood/accuracy",
                                                      "value": 0.875, "n": 8},
              "likelihood": {"n": 8, "accuracy": 0.875, "unparsed": 0, "chance": 0.25,
                             "per_type": {}},
              "generate": {"n": 8, "accuracy": 0.5, "unparsed": 1, "chance": 0.25,
                           "per_type": {}}},
}


def write_run(run_dir: Path) -> None:
    for label, metrics in MC.items():
        out = run_dir / "eval" / label / "quiz"
        out.mkdir(parents=True)
        (out / "metrics.json").write_text(json.dumps(metrics))


def test_summary_table_shows_n_chance_unparsed_and_primary(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    write_run(tmp_path)
    print_summary(PipelineResult(tmp_path, "k", None, ran=["evaluate"]))
    out = capsys.readouterr().out
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in out.splitlines() if line.count("│") > 5 and "quiz" in line}
    #          benchmark scorer metric n  chance  unparsed  base  tuned  Δ  primary
    assert rows["likelihood"] == ["quiz", "likelihood", "accuracy", "8", "0.250", "0 / 0",
                                  "0.250", "0.875", "+0.625", "★ primary"]
    assert rows["generate"] == ["quiz", "generate", "accuracy", "8", "0.250", "5 / 1",
                                "0.125", "0.500", "+0.375", ""]
    assert "eval/<benchmark>/accuracy" in out  # says which scorer the headline number is


def test_report_marks_the_primary_open_ended_metric_and_shows_samples():
    result = {"kind": "open_ended",
              "primary": {"name": "generate/token_f1", "value": 0.5, "n": 2},
              "likelihood": {"n": 2, "tokens": 10, "loss": 2.0, "perplexity": 7.389,
                             "unparsed": 0},
              "generate": {"n": 2, "exact_match": 0.5, "token_f1": 0.5, "unparsed": 1}}
    samples = {"chat": [{"id": "a", "question": "Colour?", "reference": "red",
                         "base": "", "tuned": "red"}]}
    text = render_report("k", {"tuned": {"chat": result}}, samples)
    assert "| chat | generate | token_f1 | 2 | – | – / 1 | – | 0.500 | – | ★ primary |" in text
    assert "| chat | likelihood | perplexity | 2 | – | – / 0 | – | 7.389 | – |  |" in text
    assert "  - reference: red\n  - base: (empty)\n  - tuned: red" in text

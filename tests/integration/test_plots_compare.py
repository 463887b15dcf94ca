"""Plots of a real run (files, report.md links, MLflow artifacts) and ``vlmtune compare`` of two
real runs that differ in one key: by directory and by MLflow run id."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vlmtune.cli import main as cli_main
from vlmtune.config import compose_recipe, validate
from vlmtune.pipelines.runner import run_pipeline

BENCH = "foodie_synth_sivqa"
TINY = ["train.max_iters=4", "train.save_every=4", "benchmark.limit=4"]
LRS = ("0.005", "0.001")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(shared_cache, tmp_path_factory):
    """Two tiny demo runs (4 iterations, 4 items) that differ only in ``train.lr``."""
    root = tmp_path_factory.mktemp("compare")
    mp = pytest.MonkeyPatch()
    mp.setenv("VLMTUNE_PROGRESS", "0")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    base = ["experiment=demo", f"cache_dir={shared_cache}", f"output_root={root / 'outputs'}",
            f"tracking.uri={uri}", *TINY]
    results = [run_pipeline(validate(compose_recipe([*base, f"train.lr={lr}"]))) for lr in LRS]
    mp.undo()
    return root, uri, results


def test_a_run_writes_its_plots_embeds_and_logs_them(two_runs):
    _, uri, results = two_runs
    run_dir = results[0].run_dir
    expected = {"loss.png", "lr.png", "benchmarks.png", f"categories_{BENCH}.png",
                f"confusion_{BENCH}.png",
                "categories_mmbench_synth.png"}  # the demo's MMBench sample: no confusion plot
    files = {p.name for p in (run_dir / "plots").iterdir()}
    assert files == expected
    for name in expected:
        data = (run_dir / "plots" / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (run_dir / "report.md").read_text())
    assert sorted(linked) == sorted(f"plots/{name}" for name in expected)
    # the loss curve's source: one line per optimizer step
    steps = [json.loads(line)["step"]
             for line in (run_dir / "logs/steps.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(results[0].mlflow_run_id, "plots")}
    assert logged == {f"plots/{name}" for name in expected}
    local = client.download_artifacts(results[0].mlflow_run_id, "report.md")
    assert Path(local).read_text() == (run_dir / "report.md").read_text()  # with the links


def _primary(run_dir, label):
    return json.loads((run_dir / f"eval/{label}/{BENCH}/metrics.json").read_text())["primary"]


def test_compare_two_run_dirs(two_runs, capsys):
    root, _, results = two_runs
    dirs = [r.run_dir for r in results]
    out = root / "cmp"
    assert cli_main(["compare", *map(str, dirs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["compare.md", "compare_loss.png"]
    assert (out / "compare_loss.png").read_bytes().startswith(PNG)
    md = (out / "compare.md").read_text()
    labels = [f"demo/{d.name}" for d in dirs]
    diff = re.findall(r"^\| (\S+) \| (.+) \| (.+) \|$",
                      md.split("## Config")[1].split("## Primary")[0], re.M)
    assert [row for row in diff if row[0] != "config key"] == [("train.lr", *LRS)]
    for label, run_dir in zip(labels, dirs, strict=True):
        base, tuned = _primary(run_dir, "base"), _primary(run_dir, "tuned")
        assert base["name"] == tuned["name"] == "likelihood/accuracy"
        row = (f"| {BENCH} | likelihood/accuracy | {label} | {base['value']:.3f} | "
               f"{tuned['value']:.3f} | {tuned['value'] - base['value']:+.3f} |")
        assert row in md and row in printed
    assert "![training loss](compare_loss.png)" in md


def test_compare_resolves_an_mlflow_run_id(two_runs, capsys):
    root, uri, results = two_runs
    out = root / "cmp_id"
    args = [results[0].mlflow_run_id, str(results[1].run_dir), "--out", str(out),
            "--tracking-uri", uri]
    assert cli_main(["compare", *args]) == 0
    assert f"demo/{results[0].run_dir.name}" in capsys.readouterr().out
    assert f"| train.lr | {LRS[0]} | {LRS[1]} |" in (out / "compare.md").read_text()


def test_compare_unknown_run_is_one_line_rc2(two_runs, capsys):
    root, uri, results = two_runs
    rc = cli_main(["compare", str(results[0].run_dir), "0123abcd", "--tracking-uri", uri,
                   "--out", str(root / "never")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "'0123abcd'" in err and uri in err, err
    assert not (root / "never").exists()
    assert cli_main(["compare", str(root / "missing_dir"), str(results[0].run_dir)]) == 2
    assert "missing_dir: no such run directory" in capsys.readouterr().err


def test_an_open_ended_run_gets_curves_and_bars_only(demo_overrides):
    fast = ["dataset=llava_example", "train.max_iters=2", "train.save_every=2",
            "benchmark.limit=2", "benchmark.max_new_tokens=4", "benchmarks=[heldout]"]
    result = run_pipeline(validate(compose_recipe([*demo_overrides, *fast])))
    expected = {"loss.png", "lr.png", "benchmarks.png"}  # no options: no confusion, categories
    assert {p.name for p in (result.run_dir / "plots").iterdir()} == expected
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (result.run_dir / "report.md").read_text())
    assert sorted(linked) == sorted(f"plots/{name}" for name in expected)

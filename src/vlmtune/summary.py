"""The closing summary of a CLI run: base-vs-tuned table, run directory, MLflow run id."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from vlmtune.evaluation.report import comparison_rows
from vlmtune.pipelines.runner import PipelineResult


def print_summary(result: PipelineResult) -> None:
    console = Console()
    if result.skipped:
        console.print(f"skipped finished stages: {', '.join(result.skipped)}")
    metrics = _read_metrics(result)
    if metrics:
        table = Table(title="held-out accuracy: base vs tuned")
        for column in ("benchmark", "scorer", "base", "tuned", "Δ"):
            table.add_column(column, justify="left" if column in ("benchmark", "scorer")
                             else "right")
        for row in comparison_rows(metrics):
            table.add_row(*row)
        console.print(table)
    console.print(f"run directory: {result.run_dir}")
    console.print(f"MLflow run id: {result.mlflow_run_id or '(tracking disabled)'}")


def _read_metrics(result: PipelineResult) -> dict:
    metrics: dict = {}
    for path in sorted((result.run_dir / "eval").glob("*/*/metrics.json")):
        label, bench = path.parent.parent.name, path.parent.name
        metrics.setdefault(label, {})[bench] = json.loads(path.read_text())
    return metrics

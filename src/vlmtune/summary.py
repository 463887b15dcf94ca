"""The closing summary of a CLI run: base-vs-tuned table, run directory, MLflow run id."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from vlmtune.evaluation.report import COLUMNS, PRIMARY_NOTE, comparison_rows
from vlmtune.pipelines.runner import PipelineResult

LEFT_COLUMNS = ("benchmark", "scorer", "metric", "")


def wide_console() -> Console:
    """The terminal's width, or 160 columns when writing to a file or pipe (rich's 80 would
    squash the results table into ellipses)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_summary(result: PipelineResult) -> None:
    console = wide_console()
    if result.skipped:
        console.print(f"skipped finished stages: {', '.join(result.skipped)}")
    if "ingest" in result.ran:
        _print_ingest(console, result)
    metrics = _read_metrics(result)
    if metrics:
        table = Table(title="evaluation: base vs tuned, every benchmark")
        for column in COLUMNS:
            table.add_column(column, justify="left" if column in LEFT_COLUMNS else "right")
        for row in comparison_rows(metrics):
            table.add_row(*row)
        console.print(table)
        console.print(PRIMARY_NOTE)
    registry = result.run_dir / "registry.json"
    if registry.exists():
        gate = json.loads(registry.read_text(encoding="utf-8"))
        console.print(f"registry: {gate['model']} version {gate['version']} "
                      f"{gate['decision'].replace('_', ' ')}: {gate['reason']}")
    console.print(f"run directory: {result.run_dir}")
    console.print(f"MLflow run id: {result.mlflow_run_id or '(tracking disabled)'}")


def _print_ingest(console: Console, result: PipelineResult) -> None:
    """Records kept, per split, and dropped per reason, from ``data/manifest.json``."""
    path = result.run_dir / "data" / "manifest.json"
    if not path.exists():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    counts = manifest["counts"]
    console.print(f"ingest: {manifest.get('name')} (adapter {manifest.get('adapter')})")
    table = Table()
    table.add_column("records", justify="left")
    table.add_column("count", justify="right")
    rows = [("read", counts["read"]), ("kept", counts["kept"]), ("  train", counts["train"]),
            ("  held-out", counts["heldout"]), ("dropped", counts["dropped"])]
    rows += [(f"  {reason}", n) for reason, n in manifest["drops"].items()]
    if counts.get("unassigned"):
        rows.append(("not in the split file", counts["unassigned"]))
    for label, n in rows:
        table.add_row(label, str(n))
    console.print(table)
    if manifest.get("rejected"):
        console.print(f"rejected records: {path.parent / manifest['rejected']}")
    console.print(f"licence: {manifest.get('license')} (usage: {manifest.get('usage')}); "
                  f"fingerprint {manifest['fingerprint']}")


def _read_metrics(result: PipelineResult) -> dict:
    metrics: dict = {}
    for path in sorted((result.run_dir / "eval").glob("*/*/metrics.json")):
        label, bench = path.parent.parent.name, path.parent.name
        metrics.setdefault(label, {})[bench] = json.loads(path.read_text())
    return metrics

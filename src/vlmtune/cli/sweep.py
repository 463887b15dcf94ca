"""A Hydra sweep's closing summary: one table of its jobs and ``sweep_summary.{md,json}``.

Hydra's basic launcher runs every job of ``vlmtune run -m …`` in this process; this callback
(registered in ``recipes/config.yaml`` under ``hydra.callbacks``) collects what each job
returned, writes ``<num>/job.json`` and a ``run`` link to its run directory in the job's sweep
folder, and at the end prints the table: swept values → each benchmark's primary metric for
the base and the tuned model → run directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []
        self.sweeping = False
        self.parent: str | None = None  # the sweep's MLflow parent run

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.jobs, self.sweeping, self.parent = [], True, None
        if config.get("tracking") and config.tracking.enabled:  # each job: a nested child
            from vlmtune.tracking.sweep import start_parent

            name = f"{config.experiment_name} sweep {Path(str(config.hydra.sweep.dir)).name}"
            self.parent = start_parent(str(config.tracking.uri), str(config.experiment_name),
                                       name)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not self.sweeping:
            return
        job_dir = Path(str(config.hydra.runtime.output_dir))
        job = {"num": int(config.hydra.job.num), "overrides": list(job_return.overrides),
               "status": job_return.status.name}
        value = job_return._return_value  # the exception itself for a failed job
        if isinstance(value, dict):
            job |= value
            job["metrics"] = primary_metrics(Path(value["run_dir"]))
            link = job_dir / "run"
            if not link.exists() and not link.is_symlink():
                os.symlink(value["run_dir"], link, target_is_directory=True)
        elif isinstance(value, BaseException):
            job["error"] = f"{type(value).__name__}: {value}"
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "job.json").write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")
        self.jobs.append(job)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.sweeping = False
        sweep_dir = Path(str(config.hydra.sweep.dir))
        # A launcher running jobs in other processes (submitit) calls on_job_end there: the
        # jobs are then known from the job.json each one wrote.
        jobs = self.jobs or jobs_on_disk(sweep_dir)
        if not jobs:
            self._end_parent(config, jobs, None)
            return
        header, rows = sweep_table(jobs)
        write_sweep_summary(sweep_dir, jobs, header, rows)
        print_sweep_table(header, rows, sweep_dir)
        self._end_parent(config, jobs, sweep_dir / "sweep_summary.md")

    def _end_parent(self, config: DictConfig, jobs: list[dict[str, Any]],
                    summary: Path | None) -> None:
        if self.parent:
            from vlmtune.tracking.sweep import end_parent

            failed = any(job.get("status") != "COMPLETED" for job in jobs)
            end_parent(str(config.tracking.uri), str(config.experiment_name), self.parent,
                       "FAILED" if failed else "FINISHED", summary)
            self.parent = None


def jobs_on_disk(sweep_dir: Path) -> list[dict[str, Any]]:
    """The ``<num>/job.json`` records of a sweep, by job number."""
    paths = [p for p in sweep_dir.glob("*/job.json") if p.parent.name.isdigit()]
    return [json.loads(p.read_text(encoding="utf-8"))
            for p in sorted(paths, key=lambda p: int(p.parent.name))]


def primary_metrics(run_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{benchmark: {"base"|"tuned": {"name", "value", "n"}}}`` from ``eval/*/*/metrics.json``:
    its ``primary`` entry, else the first scorer's accuracy."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(run_dir.glob("eval/*/*/metrics.json")):
        label, bench = path.parent.parent.name, path.parent.name
        metrics = json.loads(path.read_text(encoding="utf-8"))
        primary = metrics.get("primary")
        if not isinstance(primary, dict):
            scorer, first = next(((k, v) for k, v in metrics.items()
                                  if isinstance(v, dict) and "accuracy" in v), (None, None))
            if first is None:
                continue
            primary = {"name": f"{scorer}/accuracy", "value": first["accuracy"],
                       "n": first.get("n")}
        found.setdefault(bench, {})[label] = primary
    return found


def swept_keys(jobs: list[dict[str, Any]]) -> list[str]:
    """The override keys whose value differs between jobs (all of them for a single job)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for key, value in _split(job["overrides"]).items():
            values.setdefault(key, set()).add(value)
    keys = [k for k, v in values.items() if len(v) > 1 or len(jobs) == 1]
    return keys or list(values)


def sweep_table(jobs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    keys = swept_keys(jobs)
    benches = sorted({b for job in jobs for b in job.get("metrics", {})})
    names = {b: next((m[label]["name"] for job in jobs
                      for label in ("tuned", "base")
                      if label in (m := job.get("metrics", {}).get(b, {}))), "")
             for b in benches}
    header = ["job", *keys]
    for bench in benches:
        header += [f"{bench} {names[bench]} base", f"{bench} {names[bench]} tuned"]
    header.append("run directory")
    rows = []
    for job in jobs:
        overrides = _split(job["overrides"])
        row = [str(job["num"]), *(overrides.get(k, "") for k in keys)]
        for bench in benches:
            by_label = job.get("metrics", {}).get(bench, {})
            row += [_cell(by_label.get("base")), _cell(by_label.get("tuned"))]
        row.append(job.get("run_dir") or job.get("error", ""))
        rows.append(row)
    return header, rows


def write_sweep_summary(sweep_dir: Path, jobs: list[dict[str, Any]], header: list[str],
                        rows: list[list[str]]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "sweep_summary.json").write_text(
        json.dumps({"sweep_dir": str(sweep_dir.resolve()), "swept": swept_keys(jobs),
                    "jobs": jobs}, indent=2) + "\n", encoding="utf-8")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    (sweep_dir / "sweep_summary.md").write_text(
        f"# Sweep {sweep_dir.name}\n\n" + "\n".join(lines) + "\n", encoding="utf-8")


def print_sweep_table(header: list[str], rows: list[list[str]], sweep_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"sweep: {len(rows)} jobs")
    for i, column in enumerate(header):
        table.add_column(column, justify="right" if " base" in column or " tuned" in column
                         or i == 0 else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    from vlmtune.summary import wide_console

    console = wide_console()
    console.print(table)
    console.print(f"sweep summary: {sweep_dir / 'sweep_summary.md'} (and .json)")


def _split(overrides: list[str]) -> dict[str, str]:
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)


def _cell(primary: dict[str, Any] | None) -> str:
    if not primary:
        return "–"
    n = f" (n={primary['n']})" if primary.get("n") is not None else ""
    return f"{primary['value']:.3f}{n}"

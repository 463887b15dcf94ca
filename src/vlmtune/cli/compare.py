"""``vlmtune compare RUN RUN … [--out DIR]``: runs side by side.

    vlmtune compare outputs/demo/3fa2c1d0e9 outputs/demo/77b0e1a2c4
    vlmtune compare 0f1e2d3c4b5a69788796a5b4c3d2e1f0 outputs/demo/77b0e1a2c4 --out cmp/

A RUN is a run directory, or an MLflow run id (looked up in ``--tracking-uri`` by its
``vlmtune.run_dir`` tag). Writes ``DIR/compare.md`` (the config keys that differ, each
benchmark's primary metric base / tuned per run) and ``DIR/compare_loss.png`` (the training
loss curves overlaid); prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlmtune.errors import ConfigError, VlmtuneError

MISSING = "–"


@dataclass
class Run:
    label: str
    run_dir: Path
    config: dict[str, Any]  # flattened config.yaml
    results: dict[str, dict[str, dict]]  # benchmark → label (base/tuned) → metrics.json


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlmtune compare",
        description="metrics table, config diff and overlaid curves of runs")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a run directory or an MLflow run id")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for compare.md and compare_loss.png "
                             "(default outputs/compare/<date_time>)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db",
                        help="where to look up MLflow run ids (default sqlite:///mlflow.db)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    out = args.out or Path("outputs") / "compare" / time.strftime("%Y%m%d_%H%M%S")
    try:
        runs = [load_run(resolve_run(arg, args.tracking_uri)) for arg in args.runs]
        _label_uniquely(runs)
        md, png = write_comparison(runs, out)
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2
    print(config_diff_table(runs))
    print()
    print(metrics_table(runs))
    print(f"\nwrote {md}" + (f" and {png}" if png else " (no training curves to plot)"))
    return 0


def resolve_run(arg: str, tracking_uri: str) -> Path:
    """A run directory as given, or the one an MLflow run id names."""
    path = Path(arg)
    if not path.exists() and "/" not in arg and not arg.startswith("."):
        from vlmtune.tracking.lookup import run_dir_of

        path = run_dir_of(tracking_uri, arg)
        if not path.is_dir():
            raise ConfigError(f"MLflow run {arg} logged the run directory {path}, which does "
                              "not exist here")
    if not path.is_dir():
        raise ConfigError(f"{arg}: no such run directory")
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{arg}: not a vlmtune run directory (no config.yaml)")
    return path


def load_run(run_dir: Path) -> Run:
    from vlmtune.config import flatten

    run_dir = run_dir.resolve()
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    results: dict[str, dict[str, dict]] = {}
    for path in sorted(run_dir.glob("eval/*/*/metrics.json")):
        label, bench = path.parent.parent.name, path.parent.name
        results.setdefault(bench, {})[label] = json.loads(path.read_text())
    return Run(f"{run_dir.parent.name}/{run_dir.name}", run_dir, flatten(config), results)


def config_diff(runs: list[Run]) -> dict[str, list[str]]:
    """The flattened config keys whose values are not the same in every run."""
    keys = sorted(set().union(*(r.config for r in runs)))
    diff = {}
    for key in keys:
        values = [_text(r.config[key]) if key in r.config else MISSING for r in runs]
        if len(set(values)) > 1:
            diff[key] = values
    return diff


def config_diff_table(runs: list[Run]) -> str:
    diff = config_diff(runs)
    if not diff:
        return "config: no differences"
    lines = ["| config key | " + " | ".join(r.label for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    lines += [f"| {key} | " + " | ".join(values) + " |" for key, values in diff.items()]
    return "\n".join(lines)


def metrics_table(runs: list[Run]) -> str:
    """One row per benchmark and run: its primary metric for the base and the tuned model."""
    from vlmtune.evaluation.plots import primary_of

    lines = ["| benchmark | metric | run | base | tuned | Δ |", "|---|---|---|---|---|---|"]
    benches = sorted(set().union(*(r.results for r in runs)))
    for bench in benches:
        for run in runs:
            found = {label: primary_of(m) for label, m in run.results.get(bench, {}).items()}
            found = {label: p for label, p in found.items() if p is not None}
            if not found:
                lines.append(f"| {bench} | {MISSING} | {run.label} | {MISSING} | {MISSING} | "
                             f"{MISSING} |")
                continue
            name = (found.get("tuned") or found.get("base"))[0]
            base, tuned = (found[k][1] if k in found else None for k in ("base", "tuned"))
            delta = f"{tuned - base:+.3f}" if base is not None and tuned is not None else MISSING
            lines.append(f"| {bench} | {name} | {run.label} | {_num(base)} | {_num(tuned)} | "
                         f"{delta} |")
    if not benches:
        lines.append(f"| {MISSING} | {MISSING} | no evaluated run | {MISSING} | {MISSING} | "
                     f"{MISSING} |")
    return "\n".join(lines)


def write_comparison(runs: list[Run], out: Path) -> tuple[Path, Path | None]:
    """``out/compare.md`` and, if any run has a loss curve, ``out/compare_loss.png``."""
    from vlmtune.evaluation.curves import read_curves
    from vlmtune.evaluation.plots import plot_curves
    from vlmtune.pipelines.state import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    png = plot_curves({r.label: read_curves(r.run_dir).get("train/loss", []) for r in runs},
                      out / "compare_loss.png", ylabel="loss", title="training loss")
    lines = ["# vlmtune comparison", ""]
    lines += [f"- `{r.label}`: {r.run_dir}" for r in runs]
    lines += ["", "## Config (keys that differ)", "", config_diff_table(runs), "",
              "## Primary metric per benchmark", "", metrics_table(runs), "",
              "## Training loss", ""]
    lines.append(f"![training loss]({png.name})" if png else "no run has training curves")
    md = out / "compare.md"
    write_atomic(md, "\n".join(lines) + "\n")
    return md, png


def _label_uniquely(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} ({seen[run.label]})"


def _text(value: Any) -> str:
    return "null" if value is None else str(value)


def _num(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"

"""``plots/*.png`` of a run: training curves, base vs tuned, per category, confusion matrices.

Each ``plot_*`` function takes plain data and a path and writes one PNG (matplotlib's Agg
canvas, no pyplot state), or nothing when it has no data. :func:`write_plots` gathers the data
from a run directory: ``logs/steps.jsonl`` (curves) and ``eval/<base|tuned>/<benchmark>/``
``{metrics.json,predictions.jsonl}``; :func:`publish_plots` also embeds them in ``report.md``
and logs ``plots/`` to the tracker.

    plots/loss.png  plots/lr.png              train/loss, train/lr per step
    plots/benchmarks.png                      each benchmark's primary metric, base vs tuned
    plots/categories_<benchmark>.png          accuracy per category / question type
    plots/confusion_<benchmark>.png           chosen vs gold option (multiple choice only)
"""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlmtune.evaluation.curves import Curves, read_curves
from vlmtune.evaluation.report import scorer_entries

PLOTS = "plots"
LABELS = ("base", "tuned")
COLORS = {"base": "#8c8c8c", "tuned": "#1f77b4"}
UNPARSED = "unparsed"  # the confusion matrix's column for answers without an option
DPI = 100


def plot_curves(series: dict[str, list[tuple[int, float]]], path: Path, *, ylabel: str,
                title: str, log_y: bool = False) -> Path | None:
    """One line per named series of ``(step, value)``; nothing if every series is empty."""
    series = {name: points for name, points in series.items() if points}
    if not series:
        return None
    fig = _figure((7, 4))
    ax = fig.add_subplot()
    for name, points in series.items():
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=name, linewidth=1.4, marker="." if len(steps) < 30 else None)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if log_y and all(v > 0 for points in series.values() for _, v in points):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_base_vs_tuned(values: dict[str, dict[str, float]], metric_names: dict[str, str],
                       path: Path) -> Path | None:
    """``values[benchmark][label]``: one panel per benchmark (its primary metric), a bar per
    model."""
    values = {b: v for b, v in values.items() if v}
    if not values:
        return None
    fig = _figure((max(3.2 * len(values), 4.5), 4))
    for i, (bench, by_label) in enumerate(sorted(values.items()), 1):
        ax = fig.add_subplot(1, len(values), i)
        labels = [label for label in LABELS if label in by_label]
        bars = ax.bar(labels, [by_label[label] for label in labels],
                      color=[COLORS[label] for label in labels])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set(title=bench, ylabel=metric_names.get(bench, ""))
        ax.margins(y=0.15)
    fig.suptitle("base vs tuned (primary metric)")
    return _save(fig, path)


def plot_categories(values: dict[str, dict[str, float]], path: Path, *, title: str,
                    ylabel: str = "accuracy") -> Path | None:
    """``values[category][label]``: grouped bars, base beside tuned, per category."""
    if not values:
        return None
    cats = sorted(values)
    fig = _figure((max(1.1 * len(cats) + 2, 5), 4))
    ax = fig.add_subplot()
    labels = [label for label in LABELS if any(label in values[c] for c in cats)]
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(cats))]
        ax.bar(xs, [values[c].get(label, 0.0) for c in cats], width, label=label,
               color=COLORS[label])
    ax.set_xticks(range(len(cats)), cats, rotation=30 if len(cats) > 4 else 0, ha="right"
                  if len(cats) > 4 else "center", fontsize=8)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1.05))
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(matrices: dict[str, tuple[list[str], list[str], list[list[int]]]],
                   path: Path, *, title: str) -> Path | None:
    """``matrices[label] = (gold letters, chosen letters, counts[gold][chosen])``: one heat map
    per model, counts written in the cells."""
    matrices = {label: m for label, m in matrices.items() if m[2]}
    if not matrices:
        return None
    fig = _figure((4.2 * len(matrices), 4))
    for i, (label, (gold, chosen, counts)) in enumerate(matrices.items(), 1):
        ax = fig.add_subplot(1, len(matrices), i)
        ax.imshow(counts, cmap="Blues")
        peak = max(max(row) for row in counts) or 1
        for r, row in enumerate(counts):
            for c, n in enumerate(row):
                ax.text(c, r, str(n), ha="center", va="center", fontsize=8,
                        color="white" if n > peak / 2 else "black")
        ax.set_xticks(range(len(chosen)), chosen, fontsize=8)
        ax.set_yticks(range(len(gold)), gold, fontsize=8)
        ax.set(xlabel="chosen", ylabel="gold", title=label)
    fig.suptitle(title)
    return _save(fig, path)


def confusion_counts(rows: list[dict]) -> tuple[list[str], list[str], list[list[int]]]:
    """Gold option (``answer``) × chosen option (``parsed``, else ``pred``; none: unparsed)."""
    pairs = [(str(r["answer"]), _chosen(r)) for r in rows if r.get("answer") is not None]
    gold = sorted({g for g, _ in pairs} | {c for _, c in pairs if c is not None})
    chosen = gold + ([UNPARSED] if any(c is None for _, c in pairs) else [])
    counts = [[0] * len(chosen) for _ in gold]
    for g, c in pairs:
        counts[gold.index(g)][chosen.index(UNPARSED if c is None else c)] += 1
    return gold, chosen, counts


def category_scores(rows: list[dict]) -> dict[str, float]:
    """Mean ``correct`` (bool or score) per ``category``, else per ``question_type``."""
    key = next((k for k in ("category", "question_type") if any(k in r for r in rows)), None)
    if key is None:
        return {}
    by_cat: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.get(key) is not None and row.get("correct") is not None:
            by_cat[str(row[key])].append(float(row["correct"]))
    return {cat: sum(v) / len(v) for cat, v in sorted(by_cat.items())}


def primary_of(result: dict[str, Any]) -> tuple[str, float] | None:
    """``metrics.json``'s ``primary`` (name, value), else the first scorer's accuracy."""
    if isinstance(result.get("primary"), dict):
        return result["primary"]["name"], float(result["primary"]["value"])
    for scorer, entry in scorer_entries(result).items():
        if "accuracy" in entry:
            return f"{scorer}/accuracy", float(entry["accuracy"])
    return None


def write_plots(run_dir: Path, scored: dict[str, list[str]] | None = None) -> list[Path]:
    """Every plot the run directory has data for, into a fresh ``plots/``; returns the files.

    ``scored[label]`` limits the eval plots to those benchmarks of each model (default: every
    one under ``eval/``), so results of an earlier evaluation are left out.
    """
    run_dir = Path(run_dir)
    out = run_dir / PLOTS
    shutil.rmtree(out, ignore_errors=True)
    curves = read_curves(run_dir)
    written = [plot_curves(_only(curves, "train/loss"), out / "loss.png", ylabel="loss",
                           title="training loss"),
               plot_curves(_only(curves, "train/lr"), out / "lr.png", ylabel="learning rate",
                           title="learning rate")]
    results = eval_results(run_dir, scored)
    primaries = {b: {label: p for label, r in by_label.items() if (p := primary_of(r[0]))}
                 for b, by_label in results.items()}
    written.append(plot_base_vs_tuned(
        {b: {label: p[1] for label, p in ps.items()} for b, ps in primaries.items()},
        {b: next(iter(ps.values()))[0] for b, ps in primaries.items() if ps},
        out / "benchmarks.png"))
    for bench, by_label in sorted(results.items()):
        written += _benchmark_plots(out, bench, by_label)
    return [p for p in written if p is not None]


def eval_results(run_dir: Path, scored: dict[str, list[str]] | None = None
                 ) -> dict[str, dict[str, tuple[dict, list[dict]]]]:
    """``{benchmark: {label: (metrics.json, prediction rows)}}`` of ``eval/<label>/``."""
    found: dict[str, dict[str, tuple[dict, list[dict]]]] = defaultdict(dict)
    for label in LABELS:
        for metrics_path in sorted((Path(run_dir) / "eval" / label).glob("*/metrics.json")):
            bench = metrics_path.parent.name
            if scored is not None and bench not in scored.get(label, ()):
                continue
            preds_path = metrics_path.with_name("predictions.jsonl")
            preds = ([json.loads(line) for line in preds_path.read_text(encoding="utf-8")
                      .splitlines() if line.strip()] if preds_path.is_file() else [])
            found[bench][label] = (json.loads(metrics_path.read_text()), preds)
    return dict(found)


def plots_section(paths: list[Path], run_dir: Path) -> str:
    """``report.md``'s ``## Plots``: one image link per file, relative to the run directory."""
    if not paths:
        return ""
    lines = ["", "## Plots", ""]
    for path in paths:
        rel = path.relative_to(run_dir).as_posix()
        lines += [f"![{path.stem.replace('_', ' ')}]({rel})", ""]
    return "\n".join(lines)


def publish_plots(run_dir: Path, tracker, scored: dict[str, list[str]] | None = None
                  ) -> list[Path]:
    """Write the plots, append them to ``report.md`` (if any) and log ``plots/`` as artifacts."""
    from vlmtune.pipelines.state import write_atomic

    run_dir = Path(run_dir)
    paths = write_plots(run_dir, scored)
    report = run_dir / "report.md"
    if paths and report.is_file():
        write_atomic(report, report.read_text(encoding="utf-8") + plots_section(paths, run_dir))
    if paths:
        tracker.log_artifact(run_dir / PLOTS, PLOTS)
    return paths


def _benchmark_plots(out: Path, bench: str, by_label: dict[str, tuple[dict, list[dict]]]
                     ) -> list[Path | None]:
    """Per category bars and (multiple choice) the confusion matrix of one benchmark, from
    the predictions of its primary scorer."""
    rows = {label: _primary_rows(result, preds) for label, (result, preds) in by_label.items()}
    cats: dict[str, dict[str, float]] = defaultdict(dict)
    for label, label_rows in rows.items():
        for cat, score in category_scores(label_rows).items():
            cats[cat][label] = score
    name, scorer = _safe(bench), _primary_scorer(next(iter(by_label.values()))[0])
    written = [plot_categories(dict(cats), out / f"categories_{name}.png",
                               title=f"{bench}: per category",
                               ylabel=f"{scorer or 'item'} accuracy")]
    if all(r.get("kind", "multiple_choice") == "multiple_choice" for r, _ in by_label.values()):
        written.append(plot_confusion(
            {label: confusion_counts(label_rows) for label, label_rows in rows.items()},
            out / f"confusion_{name}.png", title=f"{bench}: chosen vs gold option"))
    return written


def _primary_rows(result: dict, preds: list[dict]) -> list[dict]:
    """The prediction rows of the primary metric's scorer (all rows if they name none)."""
    scorer = _primary_scorer(result)
    if scorer and any("scorer" in r for r in preds):
        return [r for r in preds if r.get("scorer") == scorer]
    return preds


def _primary_scorer(result: dict) -> str | None:
    primary = primary_of(result)
    return primary[0].split("/")[0] if primary else None


def _chosen(row: dict) -> str | None:
    value = row["parsed"] if "parsed" in row else row.get("pred")
    return None if value is None else str(value)


def _only(curves: Curves, key: str) -> dict[str, list[tuple[int, float]]]:
    return {key: curves[key]} if curves.get(key) else {}


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path

"""``report.md``: the base-vs-tuned table of every benchmark and scorer."""

from __future__ import annotations

from typing import Any


def comparison_rows(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """``metrics[label][benchmark][scorer]`` → rows (benchmark, scorer, base, tuned, delta)."""
    base, tuned = metrics.get("base", {}), metrics.get("tuned", {})
    rows = []
    for bench in sorted(set(base) | set(tuned)):
        scorers = sorted(set(base.get(bench, {})) | set(tuned.get(bench, {})))
        for scorer in scorers:
            b = base.get(bench, {}).get(scorer, {}).get("accuracy")
            t = tuned.get(bench, {}).get(scorer, {}).get("accuracy")
            delta = f"{t - b:+.3f}" if b is not None and t is not None else "–"
            rows.append((bench, scorer, _fmt(b), _fmt(t), delta))
    return rows


def render_report(run_key: str, metrics: dict[str, dict[str, Any]]) -> str:
    lines = [f"# vlmtune evaluation — run {run_key}", "",
             "| benchmark | scorer | base | tuned | Δ |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in comparison_rows(metrics)]
    for label in ("base", "tuned"):
        for bench, by_scorer in sorted(metrics.get(label, {}).items()):
            for scorer, m in sorted(by_scorer.items()):
                lines += ["", f"## {label} · {bench} · {scorer}", "",
                          f"n = {m['n']}, accuracy = {m['accuracy']:.3f}, "
                          f"unparsed = {m['unparsed']}", "",
                          "| question type | n | accuracy |", "|---|---|---|"]
                lines += [f"| {t} | {v['n']} | {v['accuracy']:.3f} |"
                          for t, v in m["per_type"].items()]
    return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"

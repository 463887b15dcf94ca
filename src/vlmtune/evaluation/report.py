"""``report.md``: the base-vs-tuned table of every benchmark, scorer and metric.

``metrics[label][benchmark]`` is a benchmark's ``metrics.json``: ``kind``, ``primary``
(``{"name": "<scorer>/<metric>", "value", "n"}``) and one entry per scorer.
"""

from __future__ import annotations

from typing import Any

COLUMNS = ("benchmark", "scorer", "metric", "n", "chance", "unparsed (base / tuned)", "base",
           "tuned", "Δ", "")
PRIMARY_MARK = "★ primary"
# the metrics each scorer reports, per benchmark kind
METRICS = {"multiple_choice": {"likelihood": ("accuracy",), "generate": ("accuracy",)},
           "open_ended": {"likelihood": ("loss", "perplexity"),
                          "generate": ("exact_match", "token_f1")},
           "mmbench": {"generate": ("circular_accuracy", "vanilla_accuracy")},
           "vqa": {"generate": ("vqa_accuracy", "exact_match", "anls")}}
PRIMARY_NOTE = (f"{PRIMARY_MARK}: the benchmark's headline metric — logged as "
                "`eval/<benchmark>/accuracy` for multiple choice (the card's first scorer, "
                "by default option likelihood); generation token-F1 for open-ended data; "
                "circular accuracy for MMBench; VQAv2 accuracy for VQA. "
                "Chance: the mean of 1/#options over the items (multiple choice only).")


def scorer_entries(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-scorer entries of one ``metrics.json`` (without ``kind`` / ``primary``)."""
    return {k: v for k, v in result.items()
            if isinstance(v, dict) and k != "primary" and "n" in v}


def comparison_rows(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    """``metrics[label][benchmark]`` → one row per benchmark, scorer and metric (COLUMNS)."""
    base, tuned = metrics.get("base", {}), metrics.get("tuned", {})
    rows = []
    for bench in sorted(set(base) | set(tuned)):
        b_res, t_res = base.get(bench, {}), tuned.get(bench, {})
        kind = (t_res or b_res).get("kind", "multiple_choice")
        primary = (t_res or b_res).get("primary", {}).get("name")
        b_sc, t_sc = scorer_entries(b_res), scorer_entries(t_res)
        first = (primary or "").split("/")[0]  # the primary scorer's rows first
        for scorer in sorted(set(b_sc) | set(t_sc), key=lambda name: (name != first, name)):
            b_m, t_m = b_sc.get(scorer, {}), t_sc.get(scorer, {})
            ref = t_m or b_m
            chance = ref.get("chance")
            unparsed = f"{b_m.get('unparsed', '–')} / {t_m.get('unparsed', '–')}"
            for metric in METRICS.get(kind, {}).get(scorer, ("accuracy",)):
                b, t = b_m.get(metric), t_m.get(metric)
                delta = f"{t - b:+.3f}" if b is not None and t is not None else "–"
                mark = PRIMARY_MARK if f"{scorer}/{metric}" == primary else ""
                rows.append((bench, scorer, metric, str(ref.get("n", "–")), _fmt(chance),
                             unparsed, _fmt(b), _fmt(t), delta, mark))
    return rows


def render_report(run_key: str, metrics: dict[str, dict[str, Any]],
                  samples: dict[str, list[dict]] | None = None) -> str:
    lines = [f"# vlmtune evaluation — run {run_key}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [f"| {' | '.join(row)} |" for row in comparison_rows(metrics)]
    lines += ["", PRIMARY_NOTE]
    for label in ("base", "tuned"):
        for bench, result in sorted(metrics.get(label, {}).items()):
            for scorer, m in sorted(scorer_entries(result).items()):
                if "per_category" in m:  # MMBench: circular / vanilla per (l2-)category
                    lines += _category_lines(f"{label} · {bench} · {scorer}", m)
                if "per_type" not in m:
                    continue
                lines += ["", f"## {label} · {bench} · {scorer}", "",
                          f"n = {m['n']}, accuracy = {m['accuracy']:.3f}, "
                          f"unparsed = {m['unparsed']}", "",
                          "| question type | n | accuracy |", "|---|---|---|"]
                lines += [f"| {t} | {v['n']} | {v['accuracy']:.3f} |"
                          for t, v in m["per_type"].items()]
    for bench, rows in sorted((samples or {}).items()):
        if not rows:
            continue
        lines += ["", f"## sample generations · {bench}", ""]
        for row in rows:
            lines += [f"- **{row['id']}** — question: {_inline(row['question'])}",
                      f"  - reference: {_inline(row['reference'])}"]
            lines += [f"  - {label}: {_inline(row[label])}" for label in ("base", "tuned")
                      if label in row]
    return "\n".join(lines) + "\n"


def _category_lines(title: str, m: dict[str, Any]) -> list[str]:
    lines = ["", f"## {title}", "",
             f"n = {m['n']} questions ({m['rows']} rows with rotations), circular accuracy = "
             f"{m['circular_accuracy']:.3f}, vanilla accuracy = {m['vanilla_accuracy']:.3f}, "
             f"unparsed = {m['unparsed']}", "",
             "| category | n | circular | vanilla |", "|---|---|---|---|"]
    for key in ("per_category", "per_l2_category"):
        lines += [f"| {name} | {v['n']} | {v['circular_accuracy']:.3f} | "
                  f"{v['vanilla_accuracy']:.3f} |" for name, v in m[key].items()]
    return lines


def _inline(text: str) -> str:
    return " ".join(str(text).split()) or "(empty)"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"

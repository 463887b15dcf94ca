"""A run's training curves: ``logs/steps.jsonl``, one line per optimizer step.

The train stage appends ``{"step": N, "train/loss": …, "train/lr": …, …}`` after every step
(:class:`StepLog`); plots and ``vlmtune compare`` read it back (:func:`read_curves`). A resumed
run appends the steps it trains again, so the last line of a step wins. Runs trained before the
step log existed fall back to mmengine's ``logs/<time>/vis_data/scalars.json`` (every logger
interval only).
"""

from __future__ import annotations

import json
from pathlib import Path

STEP_LOG = Path("logs") / "steps.jsonl"
# mmengine's scalar names → ours
MMENGINE_KEYS = {"loss": "train/loss", "lr": "train/lr"}

Curves = dict[str, list[tuple[int, float]]]  # metric → [(step, value)] in step order


class StepLog:
    """A step callback ``(step, metrics)`` appending each step to ``logs/steps.jsonl``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STEP_LOG
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        line = json.dumps({"step": int(step), **{k: float(v) for k, v in metrics.items()}})
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")


def read_curves(run_dir: Path) -> Curves:
    """Every metric of the run's step log (else mmengine's scalars), by step; {} if none."""
    run_dir = Path(run_dir)
    if (run_dir / STEP_LOG).is_file():
        return _by_step(_json_lines(run_dir / STEP_LOG), {})
    rows = []
    for scalars in sorted(run_dir.glob("logs/*/vis_data/scalars.json")):  # oldest first
        rows += _json_lines(scalars)
    return _by_step(rows, MMENGINE_KEYS)


def _json_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return rows


def _by_step(rows: list[dict], rename: dict[str, str]) -> Curves:
    values: dict[str, dict[int, float]] = {}
    for row in rows:
        if not isinstance(row.get("step"), int):
            continue
        for key, value in row.items():
            name = rename.get(key, key) if rename else key
            if key == "step" or (rename and key not in rename):
                continue
            if isinstance(value, int | float):
                values.setdefault(name, {})[row["step"]] = float(value)
    return {name: sorted(by_step.items()) for name, by_step in sorted(values.items())}

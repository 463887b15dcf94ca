"""Per-step training metrics reach the tracker in batches, every step exactly once."""

from __future__ import annotations

from vlmtune.tracking import StepMetrics


class RecordingTracker:
    def __init__(self, held: dict[str, int] | None = None) -> None:
        self.calls: list[dict[str, list[tuple[int, float]]]] = []
        self.held = held or {}  # metric → last step the run already has

    def log_metric_steps(self, series: dict[str, list[tuple[int, float]]]) -> None:
        self.calls.append(series)

    def last_step(self, key: str) -> int | None:
        return self.held.get(key)


def test_steps_are_buffered_until_flush_then_written_once():
    tracker = RecordingTracker()
    steps = StepMetrics(tracker, every_s=3600)
    for step in range(1, 6):
        steps(step, {"train/loss": 1.0 / step, "train/lr": 0.1})
    assert tracker.calls == []
    steps.flush()
    steps.flush()  # nothing left: no second write
    assert len(tracker.calls) == 1
    assert tracker.calls[0]["train/loss"] == [(s, 1.0 / s) for s in range(1, 6)]
    assert [s for s, _ in tracker.calls[0]["train/lr"]] == [1, 2, 3, 4, 5]


def test_a_due_interval_flushes_on_the_next_step():
    tracker = RecordingTracker()
    steps = StepMetrics(tracker, every_s=0.0)
    steps(1, {"train/loss": 2.0})
    steps(2, {"train/loss": 1.5})
    assert [c["train/loss"] for c in tracker.calls] == [[(1, 2.0)], [(2, 1.5)]]


def test_steps_the_run_already_holds_are_dropped_per_metric():
    # Resumed from a checkpoint at step 4 after a kill: the run holds loss up to 6, lr up to 5.
    tracker = RecordingTracker({"train/loss": 6, "train/lr": 5})
    steps = StepMetrics(tracker, every_s=3600)
    for step in range(5, 9):
        steps(step, {"train/loss": float(step), "train/lr": 0.1, "train/new": 1.0})
    steps.flush()
    assert tracker.calls == [{"train/loss": [(7, 7.0), (8, 8.0)],
                              "train/lr": [(6, 0.1), (7, 0.1), (8, 0.1)],
                              "train/new": [(5, 1.0), (6, 1.0), (7, 1.0), (8, 1.0)]}]
    steps(6, {"train/loss": 6.0})  # nothing new: no write at all
    steps.flush()
    assert len(tracker.calls) == 1

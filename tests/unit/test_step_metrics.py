"""Per-step training metrics reach the tracker in batches, every step exactly once."""

from __future__ import annotations

from vlmtune.tracking import StepMetrics


class RecordingTracker:
    def __init__(self) -> None:
        self.calls: list[dict[str, list[tuple[int, float]]]] = []

    def log_metric_steps(self, series: dict[str, list[tuple[int, float]]]) -> None:
        self.calls.append(series)


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

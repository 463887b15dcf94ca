"""A store that stops answering: buffered steps are kept, retried, and written exactly once."""

from __future__ import annotations

from vlmtune.tracking import StepMetrics


class FlakyTracker:
    """Refuses writes while ``down`` (as requests does: ConnectionError is an OSError)."""

    def __init__(self) -> None:
        self.down = False
        self.written: dict[str, list[tuple[int, float]]] = {}
        self.buffers: list = []

    def log_metric_steps(self, series: dict[str, list[tuple[int, float]]]) -> None:
        if self.down:
            raise ConnectionError("Connection refused")
        for key, rows in series.items():
            self.written.setdefault(key, []).extend(rows)

    def last_step(self, key: str) -> int | None:
        if self.down:
            raise ConnectionError("Connection refused")
        return None

    def add_buffer(self, buffer) -> None:
        self.buffers.append(buffer)


def test_failed_flushes_keep_their_steps_until_the_store_is_back():
    tracker = FlakyTracker()
    steps = StepMetrics(tracker, every_s=3600, final_retry_s=0)
    assert tracker.buffers == [steps]  # the tracker flushes it before the run ends
    steps(1, {"train/loss": 3.0})
    assert steps.flush() is True
    tracker.down = True
    for step in (2, 3, 4):
        steps(step, {"train/loss": 3.0 - step / 4})
    assert steps.flush() is False and steps.pending == 3
    steps(5, {"train/loss": 1.5})
    assert steps.flush() is False and steps.pending == 4
    tracker.down = False
    assert steps.flush() is True and steps.pending == 0
    assert steps.flush() is True  # nothing left: nothing written twice
    assert tracker.written["train/loss"] == [(1, 3.0), (2, 2.5), (3, 2.25), (4, 2.0), (5, 1.5)]


def test_a_final_flush_retries_until_its_deadline(monkeypatch):
    import vlmtune.tracking.tracker as tracker_module

    tracker = FlakyTracker()
    tracker.down = True
    naps = []

    def nap(seconds: float) -> None:  # the store comes back during the second wait
        naps.append(seconds)
        tracker.down = len(naps) < 2

    monkeypatch.setattr(tracker_module.time, "sleep", nap)
    steps = StepMetrics(tracker, every_s=3600, final_retry_s=60)
    steps(7, {"train/loss": 0.5})
    assert steps.flush(final=True) is True
    assert len(naps) == 2 and tracker.written == {"train/loss": [(7, 0.5)]}

"""Experiment tracking seam: the only package that imports mlflow.

Names are loaded on first use, so ``vlmtune.tracking.probe`` (standard library only) does not
pay for importing mlflow.
"""

from __future__ import annotations

from typing import Any

from vlmtune.tracking.probe import check_reachable

__all__ = ["MlflowTracker", "NullTracker", "StepMetrics", "Tracker", "check_reachable",
           "open_tracker"]


def __getattr__(name: str) -> Any:
    """Anything else public comes from :mod:`vlmtune.tracking.tracker` (imports mlflow)."""
    if not name.startswith("_") and name != "tracker":
        import importlib

        tracker = importlib.import_module("vlmtune.tracking.tracker")
        if hasattr(tracker, name):
            return getattr(tracker, name)
    raise AttributeError(f"module 'vlmtune.tracking' has no attribute {name!r}")

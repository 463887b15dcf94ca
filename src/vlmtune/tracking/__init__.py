"""Experiment tracking seam: the only package that imports mlflow."""

from vlmtune.tracking.tracker import (
    MlflowTracker,
    NullTracker,
    StepMetrics,
    Tracker,
    check_reachable,
    open_tracker,
)

__all__ = ["MlflowTracker", "NullTracker", "StepMetrics", "Tracker", "check_reachable",
           "open_tracker"]

"""Experiment tracking seam: the only package that imports mlflow."""

from vlmtune.tracking.tracker import MlflowTracker, NullTracker, Tracker, open_tracker

__all__ = ["MlflowTracker", "NullTracker", "Tracker", "open_tracker"]

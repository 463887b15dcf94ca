"""Benchmarks, scorers and reports."""

"""Benchmarks beyond the held-out split: cards, MMBench, VQA, FoodieQA."""

"""Checkpoint conversion: adapter merge (and, later, layout converters and serving bundles)."""

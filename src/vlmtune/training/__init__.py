"""Training engine seam over mmengine: the only package that imports it."""

"""Model seam: families (load, tiny build, module names) and fine-tuning methods.

The only package that constructs transformers models.
"""
